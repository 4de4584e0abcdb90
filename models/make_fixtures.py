"""Regenerate the committed fixtures: ``python -m onnxopt.models.make_fixtures``.

This writes demo.onnx from the synthetic zoo. The real-data fixtures have their own scripts:
``make_digits_data`` (digits.npz, needs scikit-learn) and ``train_digits`` (digits_*.onnx, needs
torch); ``python -m onnxopt.models.digits`` rewrites digits_test.npz and digits_calib.npz.
"""

from __future__ import annotations

import onnx

from . import FIXTURES, build

# fixture name -> (model name, seed)
FIXTURE_MODELS = {"demo": ("repvgg_a0-tiny", 0)}  # train-time form: BNs and branches


def main() -> None:
    for fixture, (name, seed) in FIXTURE_MODELS.items():
        path = FIXTURES / f"{fixture}.onnx"
        onnx.save(build(name, seed=seed), path)
        print(f"wrote {path} ({name}, seed {seed}, {path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
