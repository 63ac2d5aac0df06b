"""A fine-tuned MR classifier through export and serve: label agreement and load figures.

Fine-tunes a student on MR exactly as `tf-minilm evaluate --task mr --save-model DIR`
does (or takes an already saved classifier), exports it with `tf-minilm export`'s
defaults, starts `tf-minilm serve` on a free loopback port for `model.onnx` and for
`model.int8.onnx`, sends the whole MR test split to `POST /v1/classify` (32 texts per
request) and compares the served labels with the Keras model's predictions on the same
texts at the same length; then load-tests each server, one text per request.

    .venv/bin/python benchmarks/classifier_serving.py --student runs/distill/student \
        --workdir runs/classifier --json runs/classifier/result.json
    .venv/bin/python benchmarks/classifier_serving.py --classifier runs/classifier/saved/x-mr.keras
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def fine_tune(student: str, save_dir: str, epochs: int, max_train: int | None) -> str:
    from tf_minilm.evaluate.downstream import evaluate_model
    from tf_minilm.evaluate.settings import EvalSettings
    from tf_minilm.evaluate.tasks import load_task

    task = load_task("mr", max_train=max_train)
    started = time.perf_counter()
    result = evaluate_model(student, task, EvalSettings(epochs=epochs), save_dir=save_dir,
                            verbose=0)
    print(f"fine-tuned {student} on MR ({len(task.train_texts)} texts, {epochs} epochs) in "
          f"{time.perf_counter() - started:.0f} s: held-out accuracy {result['accuracy']:.4f}",
          flush=True)
    return result["saved_model"]


def keras_predictions(path: str, texts: list[str], max_seq_len: int,
                      tokenizer_dir: str) -> np.ndarray:
    import keras
    import tensorflow as tf

    from tf_minilm.hf.tokenizer import load_tokenizer
    from tf_minilm.tokens import batched_apply, tokenize

    model = keras.saving.load_model(path, compile=False)
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = tokenize(tokenizer, texts, max_seq_len)
    pad_id = model.encoder.config.pad_token_id

    @tf.function
    def logits(input_ids, attention_mask, token_type_ids):
        return model({"input_ids": input_ids, "attention_mask": attention_mask,
                      "token_type_ids": token_type_ids}, training=False)

    values = batched_apply(lambda b: logits(b["input_ids"], b["attention_mask"],
                                            b["token_type_ids"]).numpy(), ids, 32, pad_id)
    return np.argmax(values, axis=1)


def served_labels(url: str, texts: list[str], per_request: int = 32) -> list[str]:
    import urllib.request

    labels: list[str] = []
    for start in range(0, len(texts), per_request):
        body = json.dumps({"input": texts[start:start + per_request]}).encode()
        request = urllib.request.Request(url + "/v1/classify", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            labels += [row["label"] for row in json.load(response)["data"]]
    return labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="runs/distill/student",
                        help="HF student folder to fine-tune (ignored with --classifier)")
    parser.add_argument("--classifier", default=None,
                        help="an already saved classifier (.keras beside its .json)")
    parser.add_argument("--workdir", default="runs/classifier", help="outputs go here")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--load-requests", type=int, default=200)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()

    from export.pipeline import export_model
    from serving.loadtest import run_load_test, start_local_server
    from tf_minilm.evaluate.tasks import load_task

    os.makedirs(args.workdir, exist_ok=True)
    path = args.classifier or fine_tune(args.student, os.path.join(args.workdir, "saved"),
                                        args.epochs, args.max_train)
    with open(path[: -len(".keras")] + ".json", encoding="utf-8") as handle:
        sidecar = json.load(handle)
    out = os.path.join(args.workdir, "onnx")
    started = time.perf_counter()
    report = export_model(path, out)
    print(f"exported in {time.perf_counter() - started:.0f} s: fused "
          f"{report['fused_operator_groups']}, fp32 max abs logits "
          f"{report['parity']['fp32']['max_abs_logits']:.2e}, int8 variant "
          f"{report['int8']['variant']!r} (max prob diff "
          f"{report['parity']['int8']['max_abs_probability']:.4f}, "
          f"{report['int8']['speedup']:.2f}x fp32)", flush=True)

    task = load_task("mr")
    texts = list(task.test_texts)
    names = sidecar["label_names"]
    expected = [names[i] for i in keras_predictions(path, texts, report["max_seq_len"],
                                                    sidecar["tokenizer_dir"])]
    truth = [names[i] for i in task.test_labels]
    figures: dict = {"classifier": os.path.abspath(path), "export": os.path.abspath(out),
                     "texts": len(texts), "max_seq_len": report["max_seq_len"],
                     "keras_accuracy": float(np.mean([a == b for a, b in zip(expected, truth,
                                                                             strict=True)])),
                     "int8_variant": report["int8"]["variant"], "models": {}}
    for model_file in ("model.onnx", "model.int8.onnx"):
        with start_local_server(out, model_file=model_file, threads=args.threads) as url:
            started = time.perf_counter()
            labels = served_labels(url, texts)
            seconds = time.perf_counter() - started
            levels = run_load_test(url, concurrency_levels=(1, 4, 16),
                                   requests_per_level=args.load_requests, time_budget_s=30)
        agree = float(np.mean([a == b for a, b in zip(labels, expected, strict=True)]))
        accuracy = float(np.mean([a == b for a, b in zip(labels, truth, strict=True)]))
        figures["models"][model_file] = {"agreement_with_keras": agree,
                                         "served_accuracy": accuracy,
                                         "split_seconds": seconds, "load_test": levels}
        print(f"{model_file}: labels agree with Keras on {agree:.2%} of {len(texts)} MR test "
              f"texts (accuracy {accuracy:.4f} vs Keras {figures['keras_accuracy']:.4f}); the "
              f"split took {seconds:.1f} s in requests of 32", flush=True)
        print("  clients | requests/s | p50 ms | p99 ms | errors")
        for level in levels:
            print(f"  {level['concurrency']:7d} | {level['requests_per_s']:10.1f} | "
                  f"{level['p50_ms']:6.1f} | {level['p99_ms']:6.1f} | {level['errors']}")
    if args.json:
        from tf_minilm.fileio import write_json_atomic

        write_json_atomic(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
