"""Perplexity of a Hugging Face causal LM with its KV cache passed through kvq methods.

    python -m kvq.ppl --model DIR --text wikitext2-test.txt --method rtn,kivi,rotatekv --bits 2,4

The protocol of `kvq ppl` (docs/spec.md §9) and the papers': the whole text (WikiText-2 as its
"\\n\\n"-joined test split) tokenized once, cut into chunks of W - 1 tokens each with BOS in
front (W tokens when the model has no BOS), every chunk run from an empty cache; PPL =
exp(sum NLL / N) over every predicted token, NLL in fp64 from the model's logits. The fp32 cache
(the model's own DynamicCache) is the baseline; each method at each bit width runs through
kvq.hf.KvqCache, calibrated on the fp32 activations of the first chunk (rotatekv's
permutation, KVSink's l*/C*). --mode decode (default) feeds one token at a time, as kvq ppl
does, so each token attends to the cache as the method holds it at that moment; --mode prefill
feeds each chunk in one forward (faster; earlier tokens are then read as the method stores them
once the whole chunk has arrived). A table goes to stdout, a progress bar to stderr, and one run
with a case per (method, bits) to the results store (--db), in the rows `kvq report accuracy`
reads (op "method", metrics ppl, ppl_fp32, bits_per_element).
Exit status: 0 done, 2 bad input (the message names the file or option), 1 anything else.
"""
import argparse
import json
import math
import os
import sys
import time

from . import _kvq


def split_list(s):
    return [x for x in s.split(",") if x]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m kvq.ppl", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--model", required=True, help="model directory (save_pretrained) or hub id")
    p.add_argument("--text", required=True, help="UTF-8 text file")
    p.add_argument("--method", required=True,
                   help="methods, comma-separated: " + ", ".join(m for m in (
                       "fp32", "rtn", "kivi", "kvquant", "rotatekv", "kvsink+kvquant",
                       "akvq-vl")))
    p.add_argument("--bits", default="2,4", help="bit widths, comma-separated (default 2,4)")
    p.add_argument("--window", type=int, default=256, help="W: chunks of BOS + W-1 tokens")
    p.add_argument("--max-tokens", type=int, default=-1,
                   help="use only the first N text tokens (-1: all)")
    p.add_argument("--db", default="results/kvq.db", help="results database; empty: none")
    p.add_argument("--backend", default="ref", help="backend of the methods (ref)")
    p.add_argument("--mode", choices=["decode", "prefill"], default="decode")
    p.add_argument("--batch", type=int, default=16, help="chunks run side by side (default 16)")
    p.add_argument("--device", default="cpu", help="where the model runs (default cpu)")
    p.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32",
                   help="the model's compute dtype (default f32)")
    p.add_argument("--llama2c-tokenizer",
                   help="tokenize with this llama2.c tokenizer (.bin) as kvq ppl does, instead "
                   "of the model's own (models converted by python -m kvq.llama2c)")
    p.add_argument("--group", type=int, default=128, help="G of every method (default 128)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


class Progress:
    """A progress bar on stderr (tqdm when installed), one per case."""

    def __init__(self, total, label, quiet):
        self.bar = None
        if quiet:
            return
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=label, unit="tok", file=sys.stderr, leave=False)
        except ImportError:
            self.total, self.label, self.done = total, label, 0

    def update(self, n):
        if self.bar is not None:
            self.bar.update(n)
        elif hasattr(self, "label"):
            self.done += n
            print(f"\rppl {self.label}: {self.done}/{self.total} tokens", end="", file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif hasattr(self, "label"):
            print(file=sys.stderr)


def chunks_of(ids, window, bos):
    """kvq ppl's chunks: W - 1 ids with BOS in front (W ids without a BOS)."""
    if window < 2:
        raise _kvq.Error(f"ppl: window {window} must be at least 2 (BOS + one token per chunk)")
    step = window - 1 if bos is not None else window
    out = []
    for begin in range(0, len(ids), step):
        chunk = ([bos] if bos is not None else []) + ids[begin: begin + step]
        if len(chunk) >= 2:
            out.append(chunk)
    return out


def chunk_nll(torch, model, batch, make_cache, mode, progress):
    """Summed NLL of every chunk of `batch` (equal lengths), its cache's stored bits and
    elements."""
    ids = torch.tensor(batch, device=model.device)
    cache = make_cache()
    sums = torch.zeros(len(batch), dtype=torch.float64)
    with torch.inference_mode():
        if mode == "prefill":
            logits = model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True).logits
            logp = torch.log_softmax(logits.double().cpu(), -1)
            sums -= logp.gather(-1, ids[:, 1:].cpu().unsqueeze(-1)).squeeze(-1).sum(-1)
            progress.update(len(batch) * (ids.shape[1] - 1))
        else:
            for t in range(ids.shape[1] - 1):
                logits = model(input_ids=ids[:, t: t + 1], past_key_values=cache,
                               use_cache=True).logits[:, -1]
                logp = torch.log_softmax(logits.double().cpu(), -1)
                sums -= logp.gather(-1, ids[:, t + 1].cpu().unsqueeze(-1)).squeeze(-1)
                progress.update(len(batch))
    bits, elements = cache.storage() if hasattr(cache, "storage") else (0, 0)
    return sums.tolist(), bits, elements


def perplexity(torch, model, chunks, make_cache, args, label):
    """(sum NLL, predicted tokens, bits, elements, seconds) over every chunk."""
    start = time.monotonic()
    by_length = {}
    for c in chunks:
        by_length.setdefault(len(c), []).append(c)
    progress = Progress(sum(len(c) - 1 for c in chunks), label, args.quiet)
    nll = 0.0
    bits = elements = 0
    try:
        # Chunk sums added in chunk order, as kvq ppl adds them (one order, one result).
        sums = {}
        for length, group in by_length.items():
            for i in range(0, len(group), args.batch):
                batch = group[i: i + args.batch]
                s, b, e = chunk_nll(torch, model, batch, make_cache, args.mode, progress)
                for chunk, value in zip(batch, s):
                    sums[id(chunk)] = value
                bits, elements = bits + b, elements + e
        nll = math.fsum(sums[id(c)] for c in chunks) if chunks else 0.0
    finally:
        progress.close()
    predicted = sum(len(c) - 1 for c in chunks)
    return nll, predicted, bits, elements, time.monotonic() - start


def load(args, torch):
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=dtype)
    except Exception as e:  # transformers raises several types; its message is what helps
        raise _kvq.Error(f"--model {args.model}: cannot load it as a causal LM ({e})") from e
    model.to(args.device).eval()
    if args.llama2c_tokenizer:
        tok = _kvq.Llama2Tokenizer(args.llama2c_tokenizer)
        if tok.vocab_size != model.config.vocab_size:
            raise _kvq.Error(f"--llama2c-tokenizer {args.llama2c_tokenizer}: {tok.vocab_size} "
                             f"tokens, the model has {model.config.vocab_size}")
        ids = tok.encode(_kvq.read_text_file(args.text))
        return model, ids, 1
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except Exception as e:
        raise _kvq.Error(f"--model {args.model}: cannot load its tokenizer ({e})") from e
    try:
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise _kvq.Error(f"--text {args.text}: cannot read it as UTF-8 ({e})") from e
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is None:
        bos = getattr(model.config, "bos_token_id", None)
    return model, ids, bos


def cases_of(args):
    cases = []
    for name in split_list(args.method):
        _kvq.MethodParams(name)  # unknown names: kvq.Error listing the known ones
        if name == "fp32":
            continue
        for b in split_list(args.bits):
            try:
                bits = int(b)
            except ValueError as e:
                raise _kvq.Error(f"ppl: --bits value '{b}' is not an integer") from e
            if bits not in (1, 2, 3, 4, 8):
                raise _kvq.Error(f"ppl: --bits {b} is not one of 1, 2, 3, 4, 8 (docs/spec.md §3)")
            cases.append(_kvq.MethodParams(name, bits, group=args.group))
    return cases


def write_rows(args, model_name, results, command):
    store = _kvq.Store(args.db)
    run = store.begin_run(command)
    base = results[0][1]
    for params, r in results:
        method = params.method if params else "fp32"
        bits = params.bits if params else 32
        ppl = math.exp(r["nll"] / r["predicted"])
        p = {"op": "method", "study": "ppl", "engine": "transformers", "model": args.model,
             "text": args.text, "method": method, "bits": bits, "window": args.window,
             "max_tokens": args.max_tokens, "mode": args.mode, "tokens": r["predicted"],
             "chunks": r["chunks"]}
        repro = (f"python -m kvq.ppl --model {args.model} --text {args.text} --method {method}"
                 + (f" --bits {bits}" if params else "") + f" --window {args.window}"
                 + (f" --max-tokens {args.max_tokens}" if args.max_tokens >= 0 else "")
                 + (f" --llama2c-tokenizer {args.llama2c_tokenizer}"
                    if args.llama2c_tokenizer else "") + f" --mode {args.mode}")
        store.add_case(run, f"ppl/{model_name}/{method}/b{bits}/W{args.window}", method,
                       json.dumps(p), repro,
                       [("ref", "ppl", ppl, ""), ("ref", "ppl_fp32", math.exp(base["nll"] /
                                                                              base["predicted"]),
                                                  ""),
                        ("ref", "nll", r["nll"] / r["predicted"], ""),
                        ("ref", "bits_per_element", r["bpe"], "bits"),
                        ("ref", "time", r["seconds"], "s")])
    store.finish_run(run, "complete")
    print(f"ppl: run {run} written to {args.db}", file=sys.stderr)


def run(args):
    try:
        import torch
        from . import hf
    except ImportError as e:
        raise _kvq.Error(f"torch and transformers are needed ({e}); scripts/install-deps.sh "
                         "--hf installs them into .venv-hf/") from e
    if not os.path.isfile(args.text):
        raise _kvq.Error(f"--text {args.text}: no such file")
    if args.batch < 1:
        raise _kvq.Error(f"--batch {args.batch}: must be at least 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cases = cases_of(args)
    model, ids, bos = load(args, torch)
    if 0 <= args.max_tokens < len(ids):
        ids = ids[: args.max_tokens]
    if not ids:
        raise _kvq.Error(f"ppl: {args.text} gives no tokens")
    chunks = chunks_of(ids, args.window, bos)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max(len(c) for c in chunks) > limit:
        raise _kvq.Error(f"ppl: --window {args.window} exceeds the model's "
                         f"max_position_embeddings {limit}")
    model_name = os.path.basename(os.path.normpath(args.model))
    print(f"ppl: {model_name} on {args.text}: {len(ids)} tokens, {len(chunks)} chunks of "
          f"{'BOS + ' if bos is not None else ''}up to {len(chunks[0]) - (bos is not None)}",
          file=sys.stderr)

    results = []
    from transformers import DynamicCache
    for params in [None] + cases:
        label = "fp32" if params is None else f"{params.method} b{params.bits}"
        if params is None:
            make = DynamicCache
        else:
            calibration = hf.calibrate(model, chunks[0], params)
            make = (lambda p=params, c=calibration:
                    hf.KvqCache(model, p, calibration=c, backend=args.backend))
        nll, predicted, bits, elements, seconds = perplexity(torch, model, chunks, make, args,
                                                             label)
        bpe = bits / elements if elements else 32.0
        results.append((params, dict(nll=nll, predicted=predicted, bpe=bpe, seconds=seconds,
                                     chunks=len(chunks))))

    print(f"{'method':<16} {'bits':>5} {'bits/elem':>10} {'mean NLL':>10} {'PPL':>10} "
          f"{'vs fp32':>10} {'time s':>8}")
    base = math.exp(results[0][1]["nll"] / results[0][1]["predicted"])
    for params, r in results:
        ppl = math.exp(r["nll"] / r["predicted"])
        print(f"{params.method if params else 'fp32':<16} "
              f"{str(params.bits) if params else '32':>5} {r['bpe']:>10.3f} "
              f"{r['nll'] / r['predicted']:>10.4f} {ppl:>10.3f} "
              f"{100.0 * (ppl / base - 1.0):>+9.2f}% {r['seconds']:>8.2f}")
    if args.db:
        write_rows(args, model_name, results, "python -m kvq.ppl " + " ".join(sys.argv[1:]))


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ValueError as e:  # kvq.Error
        print(f"ppl: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
