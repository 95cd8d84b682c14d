"""A prepared module for fake timing backends: each call costs a fixed, chosen time (shared by the
fit and plausibility tests)."""


class FakePrepared:
    granularity = 1
    clock = None
    info: dict = {}

    def __init__(self, cost_us: float) -> None:
        self.cost_s = cost_us * 1e-6

    def time(self, calls: int) -> float:
        return calls * self.cost_s

    def close(self) -> None:
        pass
