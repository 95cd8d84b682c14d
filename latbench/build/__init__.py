"""LUT builds: the resumable, crash-safe build of one process (:mod:`.builder`) and the sharded
build over several ranks (:mod:`.shard`)."""
