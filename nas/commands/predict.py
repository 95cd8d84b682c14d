"""``nas predict``: colour-coded predictions and overlays for images (paper Fig. 6)."""

from __future__ import annotations

import click

from nas.commands.train import parse_size


@click.command()
@click.option("--checkpoint", "ckpt_path", required=True, type=click.Path(dir_okay=False),
              help="A checkpoint written by nas train; it names its classes and their colours.")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--resolution", default=None, help="Resize images to HxW for the network (output stays at image size).")
@click.option("--alpha", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="Overlay opacity.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N. [default: GPU if any]")
def predict(ckpt_path, images, out_dir, resolution, alpha, device) -> None:
    """Write <stem>_pred.png (palette colours), _overlay.png, _labels.png (class ids), _panel.png."""
    from pathlib import Path

    from nas.preflight import check_predict_request
    from nas.train.checkpoint import build_model, read_checkpoint
    from nas.train.predict import PredictConfig, predict_files

    dev = check_predict_request(images, out_dir, device)
    res = parse_size(resolution, "--resolution")
    ckpt = read_checkpoint(ckpt_path)
    model = build_model(ckpt, device=dev, resolution=res).to(dev)
    written = predict_files(model, [Path(p) for p in images], out_dir, ckpt.labels, device=dev,
                            cfg=PredictConfig(res, alpha))
    for w in written:
        click.echo(f"{w['pred']}  {w['overlay']}")
