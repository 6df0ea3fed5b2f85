"""PyTorch side of the text speed comparison (issue 14): the same encoder weights run the way a
PyTorch user runs them (transformers' BertModel, scaled-dot-product attention, inference mode),
with the classifier distill builds on top (mean over the tokens, then a dense 2-class head), on
the workload `distill bench --text` times: batches of random token ids, no padding.

    python scripts/torch_text_bench.py MODEL_DIR --threads 1 [--batch-size 64] [--seq-len 32] [--steps 20]

MODEL_DIR is a Hugging Face directory (config.json, model.safetensors). Prints one JSON object with
the keys of `distill bench --text --json`. scripts/bench-text-vs-torch.sh runs both side by side.
"""

import argparse
import json
import os
import resource
import time


def summarize(samples):
    samples = sorted(samples)
    at = lambda q: samples[round((len(samples) - 1) * q)]
    return [at(0.0), at(0.25), at(0.5), at(0.75), at(1.0)]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from transformers import BertModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder = BertModel.from_pretrained(args.model_dir, add_pooling_layer=False).eval()
    head = torch.nn.Linear(encoder.config.hidden_size, 2).eval()

    def classify(ids, mask):
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1)
        return head(pooled)

    def median_ms(batch, key, spread):
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(1000, encoder.config.vocab_size, (batch, args.seq_len), generator=generator)
        mask = torch.ones_like(ids)
        samples = []
        with torch.inference_mode():
            for step in range(args.warmup + args.steps):
                start = time.perf_counter()
                classify(ids, mask).numpy()
                if step >= args.warmup:
                    samples.append((time.perf_counter() - start) * 1e3)
        spread[key] = summarize(samples)
        return spread[key][2]

    spread = {}
    batch_ms = median_ms(args.batch_size, "infer", spread)
    latency_ms = median_ms(1, "latency", spread)
    params = sum(p.numel() for p in encoder.parameters()) + sum(p.numel() for p in head.parameters())
    print(
        json.dumps(
            {
                "model": args.model_dir,
                "params": params,
                "batch_size": args.batch_size,
                "seq_len": args.seq_len,
                "infer_texts_per_s": args.batch_size * 1e3 / batch_ms,
                "latency_ms": latency_ms,
                "spread": spread,
                "threads": torch.get_num_threads(),
                "backend": f"pytorch {torch.__version__}",
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
