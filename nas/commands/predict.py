"""``nas predict``: colour-coded predictions and overlays for images (paper Fig. 6), or Cityscapes
label-id results for the test server (``--format cityscapes``)."""

from __future__ import annotations

import click

from nas.commands.train import parse_resolution_choice


@click.command()
@click.option("--checkpoint", "ckpt_path", required=True, type=click.Path(dir_okay=False),
              help="A checkpoint written by nas train; it names its classes and their colours.")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--resolution", default="paper", show_default=True,
              help="Network input: paper (Cityscapes 769x1537, CamVid 720x960; the checkpoint's data set), native "
                   "(as stored) or HxW. Predictions are upsampled back to each image's own size.")
@click.option("--format", "fmt", default="visual", show_default=True, type=click.Choice(["visual", "cityscapes"]),
              help="visual: colour PNGs (below). cityscapes: one label-id PNG per frame under the frame's own "
                   "name (<city>_<seq>_<frame>_leftImg8bit.png), in one folder, for the test server.")
@click.option("--zip", "zip_path", default=None, type=click.Path(dir_okay=False),
              help="With --format cityscapes: also pack the results into this zip file (what the server takes).")
@click.option("--alpha", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="Overlay opacity.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N. [default: GPU if any]")
def predict(ckpt_path, images, out_dir, resolution, fmt, zip_path, alpha, device) -> None:
    """Write <stem>_pred.png (palette colours), _overlay.png, _labels.png (class ids), _panel.png;
    or, with --format cityscapes, label-id PNGs ready for the Cityscapes test server. IMAGES may be
    files or folders (every image under a folder, e.g. leftImg8bit/test)."""
    from latbench.errors import UserError
    from nas.preflight import check_predict_request
    from nas.train.checkpoint import build_model, read_checkpoint
    from nas.train.predict import PredictConfig, expand_inputs, predict_files, write_cityscapes_results
    from nas.train.trainer import resolve_resolution

    files = expand_inputs(list(images))
    dev = check_predict_request(files, out_dir, device)
    choice = parse_resolution_choice(resolution, "--resolution")
    ckpt = read_checkpoint(ckpt_path)
    res = resolve_resolution(choice, ckpt.labels.name)
    if fmt == "cityscapes" and ckpt.labels.name != "cityscapes":
        raise UserError(f"--format cityscapes needs a network trained on Cityscapes; {ckpt_path} predicts "
                        f"{ckpt.labels.name} classes")
    if zip_path is not None and fmt != "cityscapes":
        raise UserError("--zip packs test-server results: use it with --format cityscapes")
    model = build_model(ckpt, device=dev, resolution=res).to(dev)
    if fmt == "cityscapes":
        results = write_cityscapes_results(model, files, out_dir, device=dev, resolution=res, zip_path=zip_path)
        click.echo(f"wrote {len(results)} label-id PNG(s) to {out_dir}" + (f" and {zip_path}" if zip_path else ""))
        return
    written = predict_files(model, files, out_dir, ckpt.labels, device=dev, cfg=PredictConfig(res, alpha))
    for w in written:
        click.echo(f"{w['pred']}  {w['overlay']}")
