"""PyTorch peer for `vaak bench s2s`: the vaak-s2s model (chunk-causal Conformer encoder,
cross-attending RoPE decoder with KV cache, delay-pattern heads or the depth transformer over
the codebooks, conditioning) written in eager PyTorch, loading the same `config.json` +
`model.safetensors` as vaak.

    python s2s_torch.py --model DIR --parity parity.safetensors --cases cases.json \
        --threads N --json out.json

1. Parity first: the teacher-forced logits of the batch in `parity.safetensors` (`src_ids`
   `[B, T, K]`, `dec_ids` `[B, S, K]`, `dec_targets` / `dec_mask` `[B, S, K]` (what the
   depth transformer is fed), `lang` `[B]`) and the logits of KV-cached decoder (and depth)
   steps over the same inputs, against vaak's (`logits.{k}` `[B, S, V]`): max |difference|.
2. Then, only if both are within `--tolerance`, the timings of `cases.json`:
   `{"first_frame": {"source_frames", "reps"}, "decoder_step": {"batches", "memory_frames",
   "steps"}, "train_step": {"batch", "source_frames", "target_frames", "reps"} | null}`.

Writes `{"parity": {...}, "timings": {...}, "memory": {case: {"base_mb", "peak_mb"}},
"versions": {...}}`: the process's RSS when a case starts and its peak during the case (the
peak is reset through `/proc/self/clear_refs` before each case; Linux only).
"""

import argparse
import json
import math
import statistics
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--parity", required=True)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with open(f"{args.model}/config.json") as f:
        cfg = json.load(f)
    if cfg["head"] not in ("delay", "depth") or cfg.get("text_vocab_size") is not None:
        raise SystemExit("s2s_torch.py implements the delay and depth heads without a text "
                         "stream")
    DEPTH = cfg["head"] == "depth"
    W = {k: v.float() for k, v in load_file(f"{args.model}/model.safetensors").items()}

    K = cfg["codec"]["num_codebooks"]
    card = cfg["codec"]["cardinality"]
    PAD, BOS = card, card + 1
    enc_cfg, dec_cfg = cfg["encoder"], cfg["decoder"]
    chunk, left = enc_cfg["chunk_size"], enc_cfg["left_chunks"]

    def p(name):
        return W[name]

    def lin(x, name, bias=True):
        b = W.get(name + ".bias") if bias else None
        return F.linear(x, W[name + ".weight"], b)

    def ln(x, name):
        return F.layer_norm(x, (x.shape[-1],), W[name + ".weight"], W[name + ".bias"], 1e-5)

    def rope_tables(pos, hd):
        inv = torch.tensor([1.0 / 10000.0 ** (2 * i / hd) for i in range(hd // 2)],
                           dtype=torch.float64)
        a = torch.as_tensor(pos, dtype=torch.float64)[:, None] * inv[None, :]
        return a.cos().float(), a.sin().float()

    def rope(x, cos, sin):
        # x: [B, H, T, hd], rotate-half pairing.
        h = x.shape[-1] // 2
        x1, x2 = x[..., :h], x[..., h:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def heads(x, nh):
        b, t, d = x.shape
        return x.view(b, t, nh, d // nh).transpose(1, 2)

    def attend(q, k, v, mask, prefix):
        # q [B,H,T,hd], k/v [B,H,S,hd]; mask additive [*, T, S] or None.
        hd = q.shape[-1]
        s = (q * (1.0 / math.sqrt(hd))) @ k.transpose(-1, -2)
        if mask is not None:
            s = s + mask
        y = torch.softmax(s, dim=-1) @ v
        b, h, t, _ = y.shape
        return F.linear(y.transpose(1, 2).reshape(b, t, h * hd), W[prefix + ".o_proj.weight"])

    def self_attn_full(x, prefix, nh, mask, cos, sin):
        q = rope(heads(F.linear(x, W[prefix + ".q_proj.weight"]), nh), cos, sin)
        k = rope(heads(F.linear(x, W[prefix + ".k_proj.weight"]), nh), cos, sin)
        v = heads(F.linear(x, W[prefix + ".v_proj.weight"]), nh)
        return attend(q, k, v, mask, prefix)

    def ffn(x, prefix):
        return F.linear(F.gelu(F.linear(x, W[prefix + ".linear1.weight"])),
                        W[prefix + ".linear2.weight"])

    # ---------------------------------------------------------------- encoder
    enc_nh = enc_cfg["num_heads"]
    enc_hd = enc_cfg["d_model"] // enc_nh
    nblocks = enc_cfg["num_layers"]
    kernel = enc_cfg["conv_kernel"]

    def enc_embed(ids):
        return sum(F.embedding(ids[..., i], W[f"encoder.emb.{i}.weight"]) for i in range(K))

    def chunk_mask(qpos, kpos):
        m = torch.full((len(qpos), len(kpos)), float("-inf"))
        for a, q in enumerate(qpos):
            for b, k in enumerate(kpos):
                qc, kc = q // chunk, k // chunk
                if kc <= qc and qc - kc < left + 1:
                    m[a, b] = 0.0
        return m

    def conv_module(x, pre, state):
        # x [B,T,d] -> residual added; `state` [B,d,kernel-1] of earlier GLU outputs or None.
        h = lin(ln(x, pre + ".conv_norm"), pre + ".conv_in")
        d = h.shape[-1] // 2
        g = (h[..., :d] * torch.sigmoid(h[..., d:])).transpose(1, 2)
        if state is None:
            state = torch.zeros(g.shape[0], d, kernel - 1)
        full = torch.cat([state, g], dim=2)
        c = F.conv1d(full, W[pre + ".dwconv.weight"], W[pre + ".dwconv.bias"], groups=d)
        new_state = full[:, :, full.shape[2] - (kernel - 1):] if kernel > 1 else state
        y = lin(F.silu(c.transpose(1, 2)), pre + ".conv_out")
        return x + y, new_state

    def ffn1(x, pre):
        h = lin(F.silu(lin(ln(x, pre + ".ffn1_norm"), pre + ".ffn1_in")), pre + ".ffn1_out")
        return x + 0.5 * h

    def encoder_full(ids):
        t = ids.shape[1]
        x = enc_embed(ids)
        pos = list(range(t))
        cos, sin = rope_tables(pos, enc_hd)
        mask = chunk_mask(pos, pos)
        for i in range(nblocks):
            pre = f"encoder.blocks.{i}"
            a = f"{pre}.attn.layers.0"
            x = ffn1(x, pre)
            x = x + self_attn_full(ln(x, a + ".norm1"), a + ".self_attn", enc_nh, mask, cos, sin)
            x = x + ffn(ln(x, a + ".norm2"), a + ".ffn")
            x, _ = conv_module(x, pre, None)
        return ln(x, "encoder.norm_out")

    class EncState:
        def __init__(self, b):
            self.k = [None] * nblocks
            self.v = [None] * nblocks
            self.kpos = []
            self.conv = [None] * nblocks
            self.pos = 0

    def encoder_chunk(st, ids):
        # One chunk (or the partial last one) of every row, with the earlier chunks cached.
        n = ids.shape[1]
        qpos = list(range(st.pos, st.pos + n))
        kpos_all = st.kpos + qpos
        lo = max(0, (st.pos // chunk - left) * chunk)
        keep = [i for i, k in enumerate(kpos_all) if k >= lo]
        kpos = [kpos_all[i] for i in keep]
        mask = chunk_mask(qpos, kpos)
        cos, sin = rope_tables(qpos, enc_hd)
        x = enc_embed(ids)
        for i in range(nblocks):
            pre = f"encoder.blocks.{i}"
            a = f"{pre}.attn.layers.0"
            x = ffn1(x, pre)
            h = ln(x, a + ".norm1")
            q = rope(heads(F.linear(h, W[a + ".self_attn.q_proj.weight"]), enc_nh), cos, sin)
            k = rope(heads(F.linear(h, W[a + ".self_attn.k_proj.weight"]), enc_nh), cos, sin)
            v = heads(F.linear(h, W[a + ".self_attn.v_proj.weight"]), enc_nh)
            if st.k[i] is not None:
                k = torch.cat([st.k[i], k], dim=2)
                v = torch.cat([st.v[i], v], dim=2)
            k, v = k[:, :, keep], v[:, :, keep]
            st.k[i], st.v[i] = k, v
            x = x + attend(q, k, v, mask, a + ".self_attn")
            x = x + ffn(ln(x, a + ".norm2"), a + ".ffn")
            x, st.conv[i] = conv_module(x, pre, st.conv[i])
        st.kpos = kpos
        st.pos += n
        return ln(x, "encoder.norm_out")

    # ---------------------------------------------------------------- decoder
    dec_nh = dec_cfg["num_heads"]
    dec_hd = dec_cfg["d_model"] // dec_nh
    dlayers = dec_cfg["num_layers"]

    def cond_vec(lang):
        # Null speaker, neutral emotion (index 0), zero prosody (the projection's bias).
        return (W["cond.null_speaker"][None, :] + W["cond.emotion.weight"][0][None, :]
                + W["cond.language.weight"][lang] + W["cond.prosody.bias"][None, :])

    def dec_embed(ids, cond):
        x = sum(F.embedding(ids[..., i], W[f"emb.{i}.weight"]) for i in range(K))
        return x + cond[:, None, :]

    def memory_kv(mem):
        out = []
        for i in range(dlayers):
            a = f"decoder.layers.{i}.cross_attn"
            out.append((heads(F.linear(mem, W[a + ".k_proj.weight"]), dec_nh),
                        heads(F.linear(mem, W[a + ".v_proj.weight"]), dec_nh)))
        return out

    def cross(x, i, mkv):
        a = f"decoder.layers.{i}.cross_attn"
        q = heads(F.linear(ln(x, f"decoder.layers.{i}.norm_cross"), W[a + ".q_proj.weight"]),
                  dec_nh)
        return attend(q, mkv[i][0], mkv[i][1], None, a)

    def decoder_full(ids, cond, mkv):
        # Teacher-forced hidden states [B, S, d] (after the final norm).
        s = ids.shape[1]
        x = dec_embed(ids, cond)
        pos = list(range(s))
        cos, sin = rope_tables(pos, dec_hd)
        mask = torch.triu(torch.full((s, s), float("-inf")), diagonal=1)
        for i in range(dlayers):
            pre = f"decoder.layers.{i}"
            x = x + self_attn_full(ln(x, pre + ".norm1"), pre + ".self_attn", dec_nh, mask,
                                   cos, sin)
            x = x + cross(x, i, mkv)
            x = x + ffn(ln(x, pre + ".norm2"), pre + ".ffn")
        return ln(x, "decoder.norm_out")

    class DecState:
        """Preallocated self-attention KV cache for `b` rows and `cap` steps."""

        def __init__(self, b, cap):
            self.k = torch.zeros(dlayers, b, dec_nh, cap, dec_hd)
            self.v = torch.zeros(dlayers, b, dec_nh, cap, dec_hd)
            self.pos = 0

    def decoder_step(st, ids, cond, mkv):
        # ids [B, 1, K] -> hidden state [B, d].
        x = dec_embed(ids, cond)
        p_ = st.pos
        cos, sin = rope_tables([p_], dec_hd)
        for i in range(dlayers):
            pre = f"decoder.layers.{i}"
            h = ln(x, pre + ".norm1")
            a = pre + ".self_attn"
            q = rope(heads(F.linear(h, W[a + ".q_proj.weight"]), dec_nh), cos, sin)
            st.k[i, :, :, p_:p_ + 1] = rope(heads(F.linear(h, W[a + ".k_proj.weight"]), dec_nh),
                                            cos, sin)
            st.v[i, :, :, p_:p_ + 1] = heads(F.linear(h, W[a + ".v_proj.weight"]), dec_nh)
            x = x + attend(q, st.k[i, :, :, :p_ + 1], st.v[i, :, :, :p_ + 1], None, a)
            x = x + cross(x, i, mkv)
            x = x + ffn(ln(x, pre + ".norm2"), pre + ".ffn")
        st.pos += 1
        return ln(x, "decoder.norm_out")[:, 0]

    # ------------------------------------------------- heads: delay or depth transformer
    def delay_logits(h):
        return [lin(h, f"heads.{c}") for c in range(K)]

    dep_cfg = cfg["depth"]
    dep_nh = dep_cfg["num_heads"]
    dep_hd = dep_cfg["d_model"] // dep_nh
    dep_layers = dep_cfg["num_layers"]
    dep_cos, dep_sin = rope_tables(list(range(K)), dep_hd)
    dep_mask = torch.triu(torch.full((K, K), float("-inf")), diagonal=1)

    def depth_inputs(h, fed):
        # h [N, d], fed [N, K] (code j-1 feeds position j) -> [N, K, dd].
        hp = lin(h, "depth.proj")
        pos = [hp] + [hp + F.embedding(fed[:, j - 1], W[f"depth.emb.{j - 1}.weight"])
                      for j in range(1, K)]
        return torch.stack(pos, dim=1)

    def depth_full(h, fed):
        # Teacher-forced depth logits: h [B, S, d], fed [B, S, K] -> per codebook [B, S, V].
        b, s, _ = h.shape
        x = depth_inputs(h.reshape(b * s, -1), fed.reshape(b * s, K))
        for i in range(dep_layers):
            pre = f"depth.transformer.layers.{i}"
            x = x + self_attn_full(ln(x, pre + ".norm1"), pre + ".self_attn", dep_nh, dep_mask,
                                   dep_cos, dep_sin)
            x = x + ffn(ln(x, pre + ".norm2"), pre + ".ffn")
        y = ln(x, "depth.transformer.norm_out")
        return [lin(y[:, j], f"depth.heads.{j}").reshape(b, s, -1) for j in range(K)]

    def depth_frame(h, teacher=None):
        # One frame's codes from h [B, d] with a preallocated depth KV cache: per codebook,
        # greedy (or the teacher's code when given, [B, K]); returns (codes [B, K], logits).
        b = h.shape[0]
        hp = lin(h, "depth.proj")[:, None, :]
        kc = torch.zeros(dep_layers, b, dep_nh, K, dep_hd)
        vc = torch.zeros(dep_layers, b, dep_nh, K, dep_hd)
        codes, logits = [], []
        prev = None
        for j in range(K):
            x = hp if j == 0 else hp + F.embedding(prev, W[f"depth.emb.{j - 1}.weight"])[:, None]
            cos, sin = dep_cos[j:j + 1], dep_sin[j:j + 1]
            for i in range(dep_layers):
                pre = f"depth.transformer.layers.{i}"
                a = pre + ".self_attn"
                hh = ln(x, pre + ".norm1")
                q = rope(heads(F.linear(hh, W[a + ".q_proj.weight"]), dep_nh), cos, sin)
                kc[i, :, :, j:j + 1] = rope(heads(F.linear(hh, W[a + ".k_proj.weight"]), dep_nh),
                                            cos, sin)
                vc[i, :, :, j:j + 1] = heads(F.linear(hh, W[a + ".v_proj.weight"]), dep_nh)
                x = x + attend(q, kc[i, :, :, :j + 1], vc[i, :, :, :j + 1], None, a)
                x = x + ffn(ln(x, pre + ".norm2"), pre + ".ffn")
            lj = lin(ln(x, "depth.transformer.norm_out")[:, 0], f"depth.heads.{j}")
            logits.append(lj)
            c = lj.argmax(-1) if teacher is None else teacher[:, j]
            codes.append(lj.argmax(-1))
            prev = c
        return torch.stack(codes, dim=-1), logits

    def frame_logits_tf(h, tgt, msk):
        if DEPTH:
            fed = torch.where(msk > 0, tgt, torch.full_like(tgt, PAD))
            return depth_full(h, fed)
        return delay_logits(h)

    def greedy_codes(h):
        # h [B, d] -> codes [B, K] (delay: each head's argmax; depth: the depth transformer).
        if DEPTH:
            return depth_frame(h)[0]
        return torch.stack([l.argmax(-1) for l in delay_logits(h)], dim=-1)

    # ---------------------------------------------------------------- memory
    def rss_mb(field):
        # VmRSS (now) or VmHWM (peak since the last reset) of this process, in MB.
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return None

    def reset_peak():
        # Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS (Linux).
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        return rss_mb("VmRSS")

    memory = {}

    def record(name, base):
        peak = rss_mb("VmHWM")
        if base is not None and peak is not None:
            memory[name] = {"base_mb": base, "peak_mb": peak}

    # ---------------------------------------------------------------- parity
    par = load_file(args.parity)
    src = par["src_ids"].long()
    dec = par["dec_ids"].long()
    dtg = par["dec_targets"].long()
    dmk = par["dec_mask"].float()
    lang = par["lang"].long()
    with torch.no_grad():
        cond = cond_vec(lang)
        mem = encoder_full(src)
        mkv = memory_kv(mem)
        tf = frame_logits_tf(decoder_full(dec, cond, mkv), dtg, dmk)
        tf_diff = max((tf[c] - par[f"logits.{c}"].float()).abs().max().item() for c in range(K))
        st = DecState(dec.shape[0], dec.shape[1])
        step_diff = 0.0
        for s_ in range(dec.shape[1]):
            h = decoder_step(st, dec[:, s_:s_ + 1], cond, mkv)
            if DEPTH:
                fed = torch.where(dmk[:, s_] > 0, dtg[:, s_], torch.full_like(dtg[:, s_], PAD))
                ls = depth_frame(h, teacher=fed)[1]
            else:
                ls = delay_logits(h)
            step_diff = max(step_diff, max((ls[c] - par[f"logits.{c}"][:, s_].float())
                                           .abs().max().item() for c in range(K)))
        # Streamed encoder against whole: a check of the peer's own streaming path.
        es = EncState(src.shape[0])
        parts = [encoder_chunk(es, src[:, i:i + chunk]) for i in range(0, src.shape[1], chunk)]
        stream_diff = (torch.cat(parts, dim=1) - mem).abs().max().item()
    parity = {"teacher_forced_max_abs": tf_diff, "kv_steps_max_abs": step_diff,
              "encoder_stream_vs_whole_max_abs": stream_diff, "tolerance": args.tolerance}
    out = {"parity": parity, "timings": {}, "memory": memory,
           "versions": {"torch": torch.__version__}, "threads": torch.get_num_threads()}
    ok = tf_diff <= args.tolerance and step_diff <= args.tolerance
    if not ok:
        out["error"] = "parity failed: timings skipped"
        with open(args.json, "w") as f:
            json.dump(out, f)
        return

    with open(args.cases) as f:
        cases = json.load(f)
    g = torch.Generator().manual_seed(1)
    # Codebook delays: k for the delay pattern, 0 with the depth transformer.
    delays = [0] * K if DEPTH else list(range(K))

    def codes(b, t):
        return torch.randint(0, card, (b, t, K), generator=g)

    def greedy_step(st, ids, cond, mkv):
        return greedy_codes(decoder_step(st, ids, cond, mkv))

    # First frame: source streamed but for its last partial chunk; then flush + decoder steps
    # until frame 0 is complete (K steps with the delay pattern, 1 with the depth head).
    ff = cases["first_frame"]
    n_src = ff["source_frames"]
    full_chunks = (n_src // chunk) * chunk
    if full_chunks == n_src:
        full_chunks -= chunk
    times = []
    with torch.no_grad():
        c1 = cond_vec(torch.zeros(1, dtype=torch.long))
        base = reset_peak()
        for _ in range(ff["reps"] + 1):
            ids = codes(1, n_src)
            es = EncState(1)
            outs = [encoder_chunk(es, ids[:, i:i + chunk]) for i in range(0, full_chunks, chunk)]
            t0 = time.perf_counter()
            outs.append(encoder_chunk(es, ids[:, full_chunks:]))
            mkv = memory_kv(torch.cat(outs, dim=1))
            st = DecState(1, K + 1)
            inp = torch.full((1, 1, K), BOS)
            for s in range(max(delays) + 1):
                y = greedy_step(st, inp, c1, mkv)
                inp = torch.full((1, 1, K), PAD)
                for c in range(K):
                    if delays[c] <= s:
                        inp[0, 0, c] = y[0, c]
            times.append(time.perf_counter() - t0)
        record("first_frame", base)
    out["timings"]["first_frame"] = {"median_s": statistics.median(times[1:])}

    ds = cases["decoder_step"]
    out["timings"]["decoder_step"] = {}
    with torch.no_grad():
        for b in ds["batches"]:
            base = reset_peak()
            cb = cond_vec(torch.zeros(b, dtype=torch.long))
            mkv = memory_kv(encoder_full(codes(b, ds["memory_frames"])))
            st = DecState(b, ds["steps"] + 2)
            inp = torch.full((b, 1, K), BOS)
            greedy_step(st, inp, cb, mkv)  # warm-up
            per = []
            for _ in range(ds["steps"]):
                t0 = time.perf_counter()
                y = greedy_step(st, inp, cb, mkv)
                per.append(time.perf_counter() - t0)
                inp = y[:, None, :]
            per.sort()
            out["timings"]["decoder_step"][str(b)] = {
                "p50_s": statistics.median(per),
                "p95_s": per[min(len(per) - 1, math.ceil(0.95 * len(per)) - 1)],
            }
            record(f"decoder_step_b{b}", base)
            del st, mkv

    tr = cases.get("train_step")
    if tr:
        base = reset_peak()
        params = {k: v.clone().requires_grad_(True) for k, v in W.items()}
        W.update(params)
        opt = torch.optim.AdamW(list(params.values()), lr=1e-4, betas=(0.9, 0.95),
                                weight_decay=0.01)
        b = tr["batch"]
        src = codes(b, tr["source_frames"])
        tgt = codes(b, tr["target_frames"])
        t = tgt.shape[1]
        steps = t + max(max(delays), 1)
        # The layout of vaak's S2sModel::layout: inputs and targets per step.
        inp = torch.full((b, steps, K), PAD)
        tgts = torch.zeros((b, steps, K), dtype=torch.long)
        msk = torch.zeros((b, steps, K))
        inp[:, 0, :] = BOS
        for c in range(K):
            for s in range(steps):
                f = s - delays[c]
                if 0 <= f < t:
                    tgts[:, s, c] = tgt[:, f, c]
                    msk[:, s, c] = 1.0
                elif f == t and c == 0:
                    tgts[:, s, c] = card + 2
                    msk[:, s, c] = 1.0
                fi = s - 1 - delays[c]
                if s > 0:
                    if 0 <= fi < t:
                        inp[:, s, c] = tgt[:, fi, c]
                    elif fi == t and c == 0:
                        inp[:, s, c] = card + 2
        lang = torch.zeros(b, dtype=torch.long)
        times = []
        for _ in range(tr["reps"] + 1):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            cond = cond_vec(lang)
            mkv = memory_kv(encoder_full(src))
            logits = frame_logits_tf(decoder_full(inp, cond, mkv), tgts, msk)
            loss = 0.0
            for c in range(K):
                ce = F.cross_entropy(logits[c].reshape(-1, logits[c].shape[-1]),
                                     tgts[..., c].reshape(-1), reduction="none")
                m = msk[..., c].reshape(-1)
                loss = loss + (ce * m).sum() / (m.sum() + 1e-9)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
            opt.step()
            times.append(time.perf_counter() - t0)
        out["timings"]["train_step"] = {"median_s": statistics.median(times[1:]),
                                        "frames": b * t}
        record("train_step", base)
    with open(args.json, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
