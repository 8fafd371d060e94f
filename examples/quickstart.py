"""The edgeops quickstart: train small models on scikit-learn's digits data, then take each
through the toolchain for a Raspberry Pi 4, printing every command and its report.

    python examples/quickstart.py [--out DIR] [--skip-torch] [--skip-keras] [--skip-fleet]

Everything is written under --out (default: ./example). Each step is the real `edgeops`
command a user would type; the script stops at the first one that fails.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

DEVICE = "rpi4"


def run(*args, allow: tuple[int, ...] = ()) -> None:
    """Run one edgeops command as a user would; ``allow`` lists exit codes that are findings, not
    failures (8: a model over the device's budget)."""
    cmd = ["edgeops", *map(str, args)]
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    exe = [sys.executable, "-m", "edgeops.cli.main", *map(str, args)]
    proc = subprocess.run(exe, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if proc.returncode in allow:
        print(f"(exit code {proc.returncode}: see docs/exit-codes.md)")
    elif proc.returncode != 0:
        sys.exit(f"quickstart: `{shlex.join(cmd)}` failed with exit code {proc.returncode}")


def digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X.astype(np.float32), y, test_size=0.3, random_state=0, stratify=y)


def sklearn_part(out: Path, data) -> None:
    import joblib
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train, X_test, y_train, y_test = data
    model = make_pipeline(StandardScaler(), MLPClassifier((64,), max_iter=300, random_state=0))
    model.fit(X_train, y_train)
    print(f"\n== scikit-learn Pipeline (StandardScaler + MLP) on digits: test accuracy "
          f"{model.score(X_test, y_test):.3f}")
    joblib.dump(model, out / "digits_mlp.joblib")
    np.savez(out / "digits_calibration.npz", input=X_train[:200])
    np.savez(out / "digits_train.npz", input=X_train)  # the reference statistics for drift monitoring
    np.savez(out / "digits_eval.npz", input=X_test, labels=y_test)
    run("convert", out / "digits_mlp.joblib", "--to", "onnx", "-o", out / "digits_mlp.onnx",
        "--sample-input", out / "digits_eval.npz", "--device", DEVICE)
    run("quantize", out / "digits_mlp.onnx", "--mode", "auto", "--device", DEVICE,
        "--calibration", out / "digits_calibration.npz", "--eval", out / "digits_eval.npz",
        "-o", out / "digits_mlp.quant.onnx")


def benchmark_part(out: Path) -> None:
    print("\n== every variant of the scikit-learn model, measured here and estimated for the Pi 4")
    run("benchmark", out / "digits_mlp.joblib", "--variants", "--device", DEVICE,
        "--calibration", out / "digits_calibration.npz", "--eval", out / "digits_eval.npz",
        "--keep-variants", out / "variants", "--duration", "1",
        "--json", out / "benchmark.json", "--markdown", out / "benchmark.md", "--plot", out / "benchmark.png",
        allow=(8,))


def package_part(out: Path) -> None:
    print("\n== a signed bundle for the Pi 4: model, manifest, reference statistics, benchmark report")
    key, pub = out / "signing.pem", out / "signing.pub"
    if not key.exists():
        run("keygen", "--out-private", key, "--out-public", pub)
    run("package", out / "digits_mlp.joblib", "--device", DEVICE, "-o", out / "digits_mlp.edgepkg",
        "--quantize", "auto", "--calibration", out / "digits_calibration.npz", "--eval", out / "digits_eval.npz",
        "--sample-input", out / "digits_eval.npz", "--reference", out / "digits_train.npz",
        "--sign-key", key)
    run("verify", out / "digits_mlp.edgepkg", "--key", pub)


def torch_part(out: Path, data) -> None:
    import torch
    from torch import nn

    X_train, X_test, y_train, y_test = data
    torch.manual_seed(0)

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                nn.MaxPool2d(2))
            self.head = nn.Sequential(nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

        def forward(self, image):
            return self.head(self.features(image).flatten(1))

    net = DigitsCNN()
    xt = torch.from_numpy(X_train / 16.0).reshape(-1, 1, 8, 8)
    yt = torch.from_numpy(y_train)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(15):  # full-batch epochs: seconds on a CPU
        opt.zero_grad()
        nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    net.eval()
    images = (X_test / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    with torch.no_grad():
        acc = (net(torch.from_numpy(images)).argmax(1).numpy() == y_test).mean()
    print(f"\n== PyTorch CNN on digits (TorchScript): test accuracy {acc:.3f}")
    torch.jit.script(net).save(str(out / "digits_cnn.pt"))
    np.save(out / "digits_cnn_calibration.npy", (X_train[:200] / 16.0).reshape(-1, 1, 8, 8).astype(np.float32))
    np.savez(out / "digits_cnn_eval.npz", image=images, labels=y_test)
    run("convert", out / "digits_cnn.pt", "--to", "onnx", "-o", out / "digits_cnn.onnx",
        "--input-shape", "image=1,1,8,8", "--sample-input", out / "digits_cnn_eval.npz", "--device", DEVICE)
    run("quantize", out / "digits_cnn.onnx", "--mode", "int8", "--device", DEVICE,
        "--calibration", out / "digits_cnn_calibration.npy", "--eval", out / "digits_cnn_eval.npz",
        "-o", out / "digits_cnn.int8.onnx")


def keras_part(out: Path, data) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # silences TensorFlow's start-up notice
    import keras

    X_train, X_test, y_train, y_test = data
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,), name="pixels"), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(X_train / 16.0, y_train, epochs=20, batch_size=64, verbose=0)
    acc = model.evaluate(X_test / 16.0, y_test, verbose=0)[1]
    print(f"\n== Keras MLP on digits: test accuracy {acc:.3f}")
    model.save(out / "digits_keras.keras")
    np.save(out / "digits_keras_calibration.npy", (X_train[:200] / 16.0).astype(np.float32))
    np.savez(out / "digits_keras_eval.npz", pixels=(X_test / 16.0).astype(np.float32), labels=y_test)
    run("convert", out / "digits_keras.keras", "--to", "tflite", "-o", out / "digits_keras.tflite",
        "--sample-input", out / "digits_keras_eval.npz")
    run("quantize", out / "digits_keras.keras", "--mode", "int8", "--device", DEVICE,
        "--calibration", out / "digits_keras_calibration.npy", "--eval", out / "digits_keras_eval.npz",
        "-o", out / "digits_keras.int8.tflite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="example", help="output directory (default: ./example)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--skip-keras", action="store_true")
    parser.add_argument("--skip-fleet", action="store_true", help="do not start the agents and the monitor")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run("devices", "show", DEVICE)
    data = digits_split()
    sklearn_part(out, data)
    benchmark_part(out)
    package_part(out)
    if not args.skip_fleet:
        if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
            from fleet_part import fleet_part  # examples/fleet_part.py

            fleet_part(out, data, out / "digits_mlp.edgepkg", out / "signing.pub")
        else:
            print("\n(skipping the fleet part: it needs Mosquitto; apt-get install mosquitto)")
    if not args.skip_torch:
        torch_part(out, data)
    if not args.skip_keras:
        keras_part(out, data)
    print(f"\nquickstart: done; models and reports are in {out}/")


if __name__ == "__main__":
    main()
