"""PyTorch peer of `vaak bench train`: one codec training step of the same model, losses and
optimizer as vaak's trainer (crates/vaak-codec/src/train/trainer.rs), timed.

The model is built from the config `vaak bench train` writes (vaak's CodecTrainConfig as JSON):

- causal SEANet (no weight norm, no LSTM, zero left padding `k_eff - stride`, transposed convs
  trimmed on the right), ELU 1.0, residual blocks `x + conv1x1(elu(conv_k(elu(x))))`;
- residual VQ: `num_quantizers` x `codebook_size` x `dimension`, per-item quantizer dropout,
  straight-through estimator, commitment loss (mean squared residual minus code over the used
  stages), EMA codebooks (decay, Laplace smoothing) with dead-code restarts from the batch;
- losses: `time_l1 |y - x|` + multi-resolution STFT (spectral convergence + log magnitude,
  centred reflect-padded Hann STFTs) + multi-scale log-mel L1 (Slaney mel, `log10(max(., 1e-5))`)
  + `commit` x commitment, with vaak's weights;
- AdamW (torch.optim.AdamW, the config's betas/eps/decay), `clip_grad_norm_`;
- with `adversarial`: HiFi-GAN MPD + EnCodec MS-STFT discriminators (weight-normed 2-D convs,
  the config's sizes), hinge or least-squares losses, EnCodec's relative feature matching; the
  discriminator steps first on the detached output (own AdamW + clipping), then the generator
  adds its adversarial and feature terms through the updated discriminators (vaak's order).

Each step reads its loss values back to the host once (as vaak's step does). bf16 runs the
forward under `torch.autocast` with f32 weights and f32 losses.

Usage (one case per process, so peak memory is per case):
  python codec_train_peer.py --config cfg.json --input x.safetensors --batch 8 --dtype f32 \
      [--adversarial] --device cpu --threads 2 --min-time 10 --warmup 2 --json out.json
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import threading
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------- SEANet (causal, plain convs)
class CConv(nn.Module):
    def __init__(self, cin, cout, k, stride=1, dil=1):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, k, stride, dilation=dil)
        self.pad = max((k - 1) * dil + 1 - stride, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (self.pad, 0)))


class CConvTr(nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.conv = nn.ConvTranspose1d(cin, cout, k, stride)
        self.stride = stride

    def forward(self, x):
        return self.conv(x)[..., : x.shape[-1] * self.stride]


class Res(nn.Module):
    def __init__(self, dim, dil, s):
        super().__init__()
        hidden = dim // s["compress"]
        self.c1 = CConv(dim, hidden, s["residual_kernel_size"], dil=dil)
        self.c2 = CConv(hidden, dim, 1)

    def forward(self, x):
        return x + self.c2(F.elu(self.c1(F.elu(x))))


def encoder(s):
    f = s["n_filters"]
    layers, scale = [CConv(s["channels"], f, s["kernel_size"])], 1
    for r in reversed(s["ratios"]):
        dim = scale * f
        for j in range(s["n_residual_layers"]):
            layers.append(Res(dim, s["dilation_base"] ** j, s))
        layers += [nn.ELU(), CConv(dim, dim * 2, r * 2, stride=r)]
        scale *= 2
    layers += [nn.ELU(), CConv(scale * f, s["dimension"], s["last_kernel_size"])]
    return nn.Sequential(*layers)


def decoder(s):
    f = s["n_filters"]
    scale = 2 ** len(s["ratios"])
    layers = [CConv(s["dimension"], scale * f, s["kernel_size"])]
    for r in s["ratios"]:
        dim = scale * f
        layers += [nn.ELU(), CConvTr(dim, dim // 2, r * 2, r)]
        for j in range(s["n_residual_layers"]):
            layers.append(Res(dim // 2, s["dilation_base"] ** j, s))
        scale //= 2
    layers += [nn.ELU(), CConv(f, s["channels"], s["last_kernel_size"])]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- RVQ with EMA codebooks
class Rvq:
    def __init__(self, n_q, k, d, q, threshold, device):
        self.n_q, self.k, self.d = n_q, k, d
        self.decay, self.eps, self.threshold = q["ema_decay"], q["ema_epsilon"], threshold
        self.embed = torch.randn(n_q, k, d, device=device)
        self.size = torch.ones(n_q, k, device=device)
        self.sum = self.embed.clone()

    def kmeans_init(self, rows, iters):
        res = rows.detach().float()
        for i in range(self.n_q):
            c = res[torch.randint(0, res.shape[0], (self.k,), device=res.device)].clone()
            for _ in range(iters):
                a = torch.cdist(res, c).argmin(1)
                s = torch.zeros_like(c).index_add_(0, a, res)
                n = torch.bincount(a, minlength=self.k).float()[:, None]
                c = torch.where(n > 0, s / n.clamp(min=1), c)
            self.embed[i], self.sum[i] = c, c
            self.size[i] = 1.0
            res = res - c[torch.cdist(res, c).argmin(1)]

    def encode(self, i, res):
        e = self.embed[i].to(res.dtype)
        dist = (res * res).sum(1, keepdim=True) - 2 * res @ e.t() + (e * e).sum(1)[None]
        return dist.argmin(1)

    def forward(self, lat, nq_items):
        b, d, t = lat.shape
        rows = lat.transpose(1, 2).reshape(b * t, d)
        nq_rows = nq_items.repeat_interleave(t)
        res, quant = rows, torch.zeros_like(rows)
        commits, stages = [], []
        for i in range(int(nq_items.max())):
            with torch.no_grad():
                c = self.encode(i, res.detach())
            q = self.embed[i].to(rows.dtype)[c]
            m = (nq_rows > i).to(rows.dtype)[:, None]
            qm = q * m
            diff = res * m - qm
            commits.append(diff.float().pow(2).sum() / (m.sum() * d))
            keep = nq_rows > i
            stages.append((res.detach()[keep].float(), c[keep]))
            quant = quant + qm
            res = res - qm
        st = rows + (quant - rows).detach()
        return st.reshape(b, t, d).transpose(1, 2), torch.stack(commits).mean(), stages

    @torch.no_grad()
    def ema_update(self, stages):
        g = self.decay
        for i, (x, c) in enumerate(stages):
            counts = torch.bincount(c, minlength=self.k).float()
            sums = torch.zeros(self.k, self.d, device=x.device).index_add_(0, c, x)
            self.size[i] = g * self.size[i] + (1 - g) * counts
            self.sum[i] = g * self.sum[i] + (1 - g) * sums
            n = self.size[i].sum()
            smoothed = (self.size[i] + self.eps) / (n + self.k * self.eps) * n
            self.embed[i] = self.sum[i] / smoothed[:, None]
            dead = self.size[i] < self.threshold
            if dead.any():  # a host sync, as EnCodec's expire_codes_
                nd = int(dead.sum())
                pick = x[torch.randint(0, x.shape[0], (nd,), device=x.device)]
                self.embed[i][dead] = pick
                self.size[i][dead] = self.threshold
                self.sum[i][dead] = pick * self.threshold


# ---------------------------------------------------------------- reconstruction losses
MAG_EPS, MEL_CLAMP = 1e-7, 1e-5


def slaney_mel(f):
    f = torch.as_tensor(f, dtype=torch.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + torch.log(torch.clamp(f, min=1e-10) / 1000.0) / (math.log(6.4) / 27.0)
    return torch.where(f >= 1000.0, log, lin)


def slaney_hz(m):
    lin = m * (200.0 / 3)
    log = 1000.0 * torch.exp((math.log(6.4) / 27.0) * (m - 15.0))
    return torch.where(m >= 15.0, log, lin)


def mel_fbank(sr, n_fft, n_mels):
    """librosa.filters.mel(sr, n_fft, n_mels) (Slaney scale and area norm) as [bins, n_mels];
    written out so the peer needs torch only (the GPU machine's venv has no torchaudio)."""
    freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    pts = slaney_hz(torch.linspace(float(slaney_mel(0.0)), float(slaney_mel(sr / 2)), n_mels + 2,
                                   dtype=torch.float64))
    fdiff = pts[1:] - pts[:-1]
    ramps = pts[:, None] - freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    w = torch.clamp(torch.minimum(lower, upper), min=0.0)
    w = w * (2.0 / (pts[2:] - pts[:-2]))[:, None]
    return w.t().float()


def magnitude(x, n_fft, hop, win, window):
    z = torch.stft(x, n_fft, hop, win, window, center=True, pad_mode="reflect",
                   return_complex=True)
    return torch.sqrt(torch.clamp(z.real.pow(2) + z.imag.pow(2), min=MAG_EPS))


class Losses:
    def __init__(self, loss_cfg, sr, device):
        self.stft = [(r["n_fft"], r["hop"], r["win_length"],
                      torch.hann_window(r["win_length"], device=device)) for r in loss_cfg["stft"]]
        self.mel = []
        for r in loss_cfg["mel"]:
            fb = mel_fbank(sr, r["n_fft"], r["n_mels"]).to(device)
            self.mel.append((r["n_fft"], r["hop"], torch.hann_window(r["n_fft"], device=device), fb))
        self.w = loss_cfg["weights"]

    def __call__(self, y, x):
        y, x = y.squeeze(1).float(), x.squeeze(1)
        sc, mag = [], []
        for n, h, wl, win in self.stft:
            yp = magnitude(y, n, h, wl, win)
            with torch.no_grad():
                yt = magnitude(x, n, h, wl, win)
            sc.append(torch.linalg.norm(yp - yt) / torch.linalg.norm(yt))
            mag.append((yp.log() - yt.log()).abs().mean())
        mels = []
        for n, h, win, fb in self.mel:
            lp = torch.log10(torch.clamp(magnitude(y, n, h, n, win).transpose(1, 2) @ fb, min=MEL_CLAMP))
            with torch.no_grad():
                lt = torch.log10(torch.clamp(magnitude(x, n, h, n, win).transpose(1, 2) @ fb, min=MEL_CLAMP))
            mels.append((lp - lt).abs().mean())
        l1 = (y - x).abs().mean()
        return l1, torch.stack(sc).mean(), torch.stack(mag).mean(), torch.stack(mels).mean()


# ---------------------------------------------------------------- discriminators
class WnConv2d(nn.Module):
    def __init__(self, cin, cout, kernel, stride=(1, 1), dilation=(1, 1), padding=None):
        super().__init__()
        if padding is None:
            padding = ((kernel[0] - 1) * dilation[0] // 2, (kernel[1] - 1) * dilation[1] // 2)
        self.conv = nn.utils.parametrizations.weight_norm(
            nn.Conv2d(cin, cout, kernel, stride, padding, dilation))

    def forward(self, x):
        return self.conv(x)


class PeriodDisc(nn.Module):
    def __init__(self, cfg, period):
        super().__init__()
        self.period, k, n = period, cfg["mpd_kernel_size"], len(cfg["mpd_channels"])
        convs, cin = [], 1
        for i, cout in enumerate(cfg["mpd_channels"]):
            s = cfg["mpd_stride"] if i + 1 < n else 1
            convs.append(WnConv2d(cin, cout, (k, 1), (s, 1), (1, 1), ((k - 1) // 2, 0)))
            cin = cout
        self.convs = nn.ModuleList(convs)
        self.post = WnConv2d(cin, 1, (3, 1), (1, 1), (1, 1), (1, 0))
        self.slope = cfg["mpd_slope"]

    def forward(self, x):
        b, c, t = x.shape
        if t % self.period:
            x = F.pad(x, (0, self.period - t % self.period), "reflect")
            t = x.shape[-1]
        x = x.view(b, c, t // self.period, self.period)
        fmap = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), self.slope)
            fmap.append(x)
        x = self.post(x)
        fmap.append(x)
        return x.flatten(1), fmap


class StftDisc(nn.Module):
    def __init__(self, cfg, n_fft, hop, device):
        super().__init__()
        self.n_fft, self.hop, self.norm = n_fft, hop, cfg["stft_normalized"]
        self.register_buffer("win", torch.hann_window(n_fft, device=device))
        k = tuple(cfg["stft_kernel"])
        f, sc, cap = cfg["stft_filters"], cfg["stft_filters_scale"], cfg["stft_max_filters"]
        ch = lambda i: min(f * sc**i, cap)  # noqa: E731
        cin = min(f, cap)
        convs = [WnConv2d(2, cin, k)]
        for i, d in enumerate(cfg["stft_dilations"]):
            convs.append(WnConv2d(cin, ch(i + 1), k, (1, cfg["stft_freq_stride"]), (d, 1)))
            cin = ch(i + 1)
        cout = ch(len(cfg["stft_dilations"]) + 1)
        convs.append(WnConv2d(cin, cout, (k[0], k[0])))
        self.convs = nn.ModuleList(convs)
        self.post = WnConv2d(cout, 1, (k[0], k[0]))
        self.slope = cfg["stft_slope"]

    def forward(self, x):
        z = torch.stft(x.squeeze(1).float(), self.n_fft, self.hop, self.n_fft, self.win,
                       center=False, return_complex=True)
        if self.norm:
            z = z / self.win.pow(2).sum().sqrt()
        z = torch.stack([z.real, z.imag], dim=1).transpose(2, 3).to(x.dtype)
        fmap = []
        for conv in self.convs:
            z = F.leaky_relu(conv(z), self.slope)
            fmap.append(z)
        z = self.post(z)
        return z.flatten(1), fmap


class Discs(nn.Module):
    def __init__(self, cfg, device):
        super().__init__()
        self.mpd = nn.ModuleList([PeriodDisc(cfg, p) for p in cfg["periods"]])
        self.ms = nn.ModuleList([StftDisc(cfg, n, h, device) for n, h in cfg["stft_scales"]])

    def forward(self, x):
        return [d(x) for d in self.mpd] + [d(x) for d in self.ms]


def mean(terms):
    return torch.stack([t.float() for t in terms]).mean()


def d_loss(real, fake, kind):
    if kind == "hinge":
        return mean([F.relu(1 - r).mean() + F.relu(1 + f).mean() for (r, _), (f, _) in zip(real, fake)])
    return mean([(r - 1).pow(2).mean() + f.pow(2).mean() for (r, _), (f, _) in zip(real, fake)])


def g_loss(fake, kind):
    if kind == "hinge":
        return mean([F.relu(1 - f).mean() for f, _ in fake])
    return mean([(f - 1).pow(2).mean() for f, _ in fake])


def fm_loss(real, fake):
    return mean([mean([(a - b).abs().mean() / (a.abs().mean() + 1e-8) for a, b in zip(ra, fa)])
                 for (_, ra), (_, fa) in zip(real, fake)])


# ---------------------------------------------------------------- memory
def peak_host_mb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


class GpuPoller:
    """Peak GPU memory of this process by nvidia-smi (what `vaak bench train` samples too)."""

    def __init__(self):
        self.peak, self.stop = None, threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        pid = os.getpid()
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                      "--format=csv,noheader,nounits"], capture_output=True,
                                     text=True, timeout=5).stdout
                for line in out.splitlines():
                    p, m = [s.strip() for s in line.split(",")[:2]]
                    if int(p) == pid:
                        self.peak = max(self.peak or 0.0, float(m))
            except Exception:
                return
            self.stop.wait(0.2)

    def finish(self):
        self.stop.set()
        self.t.join()
        return self.peak


# ---------------------------------------------------------------- the step
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--input", required=True, help="raw little-endian f32 crops [rows, samples]")
    ap.add_argument("--samples", type=int, required=True, help="samples per crop")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--adversarial", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--min-time", type=float, default=10.0)
    ap.add_argument("--min-steps", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device("cuda" if a.device.startswith("cuda") else "cpu")
    cuda = dev.type == "cuda"
    poller = GpuPoller() if cuda else None
    cfg = json.load(open(a.config))
    m, s = cfg["model"], cfg["model"]["seanet"]
    with open(a.input, "rb") as f:
        raw = torch.frombuffer(bytearray(f.read()), dtype=torch.float32)
    x = raw.view(-1, 1, a.samples)[: a.batch].clone().to(dev)
    if x.shape[0] < a.batch:
        raise SystemExit(f"{a.input}: {x.shape[0]} crops, batch {a.batch} asked")
    enc, dec = encoder(s).to(dev), decoder(s).to(dev)
    params = list(enc.parameters()) + list(dec.parameters())
    o = cfg["optim"]
    opt = torch.optim.AdamW(params, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
                            weight_decay=o["weight_decay"])
    q = cfg["quantizer"]
    hop = 1
    for r in s["ratios"]:
        hop *= r
    frames = x.shape[-1] // hop
    threshold = q["dead_code_ratio"] * a.batch * frames / m["codebook_size"]
    rvq = Rvq(m["num_quantizers"], m["codebook_size"], s["dimension"], q, threshold, dev)
    with torch.no_grad():
        lat = enc(x)
        rvq.kmeans_init(lat.transpose(1, 2).reshape(-1, s["dimension"]), q["kmeans_iters"])
    losses = Losses(cfg["loss"], m["sample_rate"], dev)
    w = cfg["loss"]["weights"]
    adv = cfg["adversarial"]
    discs = dopt = None
    if a.adversarial:
        discs = Discs(adv["disc"], dev).to(dev)
        dopt = torch.optim.AdamW(discs.parameters(), lr=adv["lr"], betas=(adv["beta1"], adv["beta2"]),
                                 weight_decay=adv["weight_decay"])
    ac = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.dtype == "bf16")
    gen = torch.Generator().manual_seed(1)

    def step():
        u = torch.rand(a.batch, generator=gen) < q["dropout_prob"]
        r = torch.randint(1, m["num_quantizers"] + 1, (a.batch,), generator=gen)
        nq = torch.where(u, r, torch.full_like(r, m["num_quantizers"])).to(dev)
        with ac:
            lat = enc(x)
            qz, commit, stages = rvq.forward(lat, nq)
            y = dec(qz)
        l1, sc, mag, mel = losses(y, x)
        total = w["time_l1"] * l1 + w["stft_sc"] * sc + w["stft_mag"] * mag + w["mel"] * mel \
            + w["commit"] * commit.float()
        logs = [total, l1, sc, mag, mel, commit.float()]
        if discs is not None:
            with ac:
                real = discs(x)
                fake = discs(y.detach())
                dl = d_loss(real, fake, adv["loss"])
            dopt.zero_grad(set_to_none=True)
            dl.backward()
            if adv["clip_grad_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(discs.parameters(), adv["clip_grad_norm"])
            dopt.step()
            with ac:
                with torch.no_grad():
                    real = discs(x)
                fake = discs(y)
                ga, fm = g_loss(fake, adv["loss"]), fm_loss(real, fake)
            total = total + adv["adv_weight"] * ga + adv["feat_weight"] * fm
            logs += [dl.detach(), ga.detach(), fm.detach()]
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, o["clip_grad_norm"])
        opt.step()
        rvq.ema_update(stages)
        vals = torch.stack([t.detach().float() for t in logs]).cpu().tolist()  # one readback
        if cuda:
            torch.cuda.synchronize()
        return vals

    for _ in range(a.warmup):
        vals = step()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, cpu = [], []
    start = time.perf_counter()
    while len(times) < a.max_steps and (len(times) < a.min_steps or time.perf_counter() - start < a.min_time):
        t, c = time.perf_counter(), time.process_time()
        vals = step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    row = {
        "implementation": "PyTorch " + torch.__version__,
        "batch": a.batch,
        "dtype": a.dtype,
        "adversarial": a.adversarial,
        "steps": len(times),
        "step_ms_mean": 1e3 * statistics.fmean(times),
        "step_ms_median": 1e3 * statistics.median(times),
        "steps_per_s": len(times) / sum(times),
        "cpu_ms_per_step": 1e3 * statistics.fmean(cpu),
        "peak_host_mb": peak_host_mb(),
        "peak_device_mb": poller.finish() if poller else None,
        "device_allocator_peak_mb": torch.cuda.max_memory_reserved() / 2**20 if cuda else None,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in params),
        "disc_params": sum(p.numel() for p in discs.parameters()) if discs is not None else 0,
        "last_losses": vals,
    }
    out = {"rows": [row], "versions": {"torch": torch.__version__,
                                       "python": platform.python_version()}}
    with open(a.json, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
