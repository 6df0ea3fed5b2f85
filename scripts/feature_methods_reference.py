#!/usr/bin/env python3
"""Reference values for the feature distillation methods (tests/methods.rs).

Runs each method's formula as its reference code writes it (mdistiller's AT, RKD and FitNet
distillers, RepDistiller's CRD: Embed, ContrastMemory and ContrastLoss) in PyTorch, float64, on
fixed inputs, and records the losses, the gradients with respect to the student's side and, for
CRD, the updated memory banks and normalising constants. CRD runs two steps, so that the second
uses the constants fixed and the banks moved by the first.

    python3 scripts/feature_methods_reference.py   # writes tests/fixtures/methods/reference.json
"""
import json
import math
import pathlib

import torch
import torch.nn.functional as F

torch.manual_seed(20261207)
torch.set_default_dtype(torch.float64)
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "methods"


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


def entry(t):
    return {"shape": list(t.shape), "values": flat(t)}


# ---- AT (mdistiller/distillers/AT.py) --------------------------------------------------------
def single_stage_at_loss(f_s, f_t, p):
    def _at(feat, p):
        return F.normalize(feat.pow(p).mean(1).reshape(feat.size(0), -1))

    return (_at(f_s, p) - _at(f_t, p)).pow(2).mean()


def at_loss(g_s, g_t, p):
    return sum(single_stage_at_loss(f_s, f_t, p) for f_s, f_t in zip(g_s, g_t))


def at_case():
    s = [torch.randn(4, 3, 6, 6, requires_grad=True), torch.randn(4, 5, 3, 3, requires_grad=True)]
    t = [torch.randn(4, 7, 6, 6), torch.randn(4, 2, 3, 3)]
    loss = at_loss(s, t, 2)
    loss.backward()
    return {
        "p": 2.0,
        "student": [entry(x) for x in s],
        "teacher": [entry(x) for x in t],
        "loss": float(loss),
        "student_grads": [entry(x.grad) for x in s],
    }


# ---- RKD (mdistiller/distillers/RKD.py) ------------------------------------------------------
def _pdist(e, squared, eps):
    e_square = e.pow(2).sum(dim=1)
    prod = e @ e.t()
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps)
    if not squared:
        res = res.sqrt()
    res = res.clone()
    res[range(len(e)), range(len(e))] = 0
    return res


def rkd_parts(f_s, f_t, squared=False, eps=1e-12):
    stu = f_s.view(f_s.shape[0], -1)
    tea = f_t.view(f_t.shape[0], -1)
    with torch.no_grad():
        t_d = _pdist(tea, squared, eps)
        mean_td = t_d[t_d > 0].mean()
        t_d = t_d / mean_td
    d = _pdist(stu, squared, eps)
    mean_d = d[d > 0].mean()
    d = d / mean_d
    loss_d = F.smooth_l1_loss(d, t_d)
    with torch.no_grad():
        td = tea.unsqueeze(0) - tea.unsqueeze(1)
        norm_td = F.normalize(td, p=2, dim=2)
        t_angle = torch.bmm(norm_td, norm_td.transpose(1, 2)).view(-1)
    sd = stu.unsqueeze(0) - stu.unsqueeze(1)
    norm_sd = F.normalize(sd, p=2, dim=2)
    s_angle = torch.bmm(norm_sd, norm_sd.transpose(1, 2)).view(-1)
    loss_a = F.smooth_l1_loss(s_angle, t_angle)
    return loss_d, loss_a


def rkd_case():
    s = torch.randn(6, 5, requires_grad=True)
    # Large teacher spread: some distance differences exceed 1, so both branches of smooth L1 run.
    t = torch.randn(6, 8) * 3.0
    loss_d, loss_a = rkd_parts(s, t)
    total = 25.0 * loss_d + 50.0 * loss_a
    total.backward()
    return {
        "student": entry(s),
        "teacher": entry(t),
        "distance": float(loss_d),
        "angle": float(loss_a),
        "total": float(total),
        "student_grad": entry(s.grad),
    }


# ---- FitNets (mdistiller/distillers/FitNet.py, ConvReg with equal sizes) ---------------------
def fitnets_case():
    s = torch.randn(4, 3, 5, 5, requires_grad=True)
    t = torch.randn(4, 6, 5, 5).abs()
    conv = torch.nn.Conv2d(3, 6, kernel_size=1)
    bn = torch.nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(6) + 0.5)
        bn.bias.copy_(torch.randn(6) * 0.1)
    regressed = F.relu(bn(conv(s)))  # train mode: batch statistics
    loss = F.mse_loss(regressed, t)
    loss.backward()
    return {
        "student": entry(s),
        "teacher": entry(t),
        "conv_weight": entry(conv.weight),
        "conv_bias": entry(conv.bias),
        "bn_gamma": entry(bn.weight),
        "bn_beta": entry(bn.bias),
        "loss": float(loss),
        "student_grad": entry(s.grad),
        "conv_weight_grad": entry(conv.weight.grad),
        "conv_bias_grad": entry(conv.bias.grad),
        "bn_gamma_grad": entry(bn.weight.grad),
        "bn_beta_grad": entry(bn.bias.grad),
    }


# ---- CRD (RepDistiller crd/memory.py, crd/criterion.py) ---------------------------------------
EPS = 1e-7


def l2norm(x):
    return x.div(x.pow(2).sum(1, keepdim=True).pow(0.5))


def contrast_loss(x, n_data):
    bsz = x.shape[0]
    m = x.size(1) - 1
    Pn = 1 / float(n_data)
    P_pos = x.select(1, 0)
    log_D1 = torch.div(P_pos, P_pos.add(m * Pn + EPS)).log_()
    P_neg = x.narrow(1, 1, m)
    log_D0 = torch.div(P_neg.clone().fill_(m * Pn), P_neg.add(m * Pn + EPS)).log_()
    return -(log_D1.sum(0) + log_D0.view(-1, 1).sum(0)) / bsz


class Memory:
    def __init__(self, n, dim, T, momentum):
        stdv = 1.0 / math.sqrt(dim / 3)
        self.v1 = torch.rand(n, dim).mul_(2 * stdv).add_(-stdv)
        self.v2 = torch.rand(n, dim).mul_(2 * stdv).add_(-stdv)
        self.T, self.momentum, self.Z1, self.Z2 = T, momentum, -1.0, -1.0

    def forward(self, v1, v2, y, idx):
        b, dim = v1.shape
        n = self.v1.shape[0]
        w1 = torch.index_select(self.v1, 0, idx.view(-1)).detach().view(b, -1, dim)
        out_v2 = torch.exp(torch.div(torch.bmm(w1, v2.view(b, dim, 1)), self.T))
        w2 = torch.index_select(self.v2, 0, idx.view(-1)).detach().view(b, -1, dim)
        out_v1 = torch.exp(torch.div(torch.bmm(w2, v1.view(b, dim, 1)), self.T))
        if self.Z1 < 0:
            self.Z1 = (out_v1.mean() * n).item()
        if self.Z2 < 0:
            self.Z2 = (out_v2.mean() * n).item()
        out_v1 = torch.div(out_v1, self.Z1)
        out_v2 = torch.div(out_v2, self.Z2)
        with torch.no_grad():
            for bank, v in ((self.v1, v1), (self.v2, v2)):
                pos = torch.index_select(bank, 0, y.view(-1))
                pos.mul_(self.momentum).add_(torch.mul(v, 1 - self.momentum))
                bank.index_copy_(0, y, pos.div(pos.pow(2).sum(1, keepdim=True).pow(0.5)))
        return out_v1, out_v2


def crd_case():
    n, k, dim, s_dim, t_dim, b = 20, 6, 8, 5, 6, 4
    labels = torch.tensor([i % 3 for i in range(n)])
    memory = Memory(n, dim, 0.07, 0.5)
    start = {"student_memory": entry(memory.v1), "teacher_memory": entry(memory.v2)}
    embed_s = torch.nn.Linear(s_dim, dim)
    embed_t = torch.nn.Linear(t_dim, dim)
    steps = []
    for anchors in ([0, 5, 7, 13], [2, 5, 11, 19]):
        y = torch.tensor(anchors)
        negatives = []
        for a in anchors:
            others = [j for j in range(n) if labels[j] != labels[a]]
            negatives.append([a] + [others[int(i)] for i in torch.randint(len(others), (k,))])
        idx = torch.tensor(negatives)
        f_s = torch.randn(b, s_dim, requires_grad=True)
        f_t = torch.randn(b, t_dim)
        for p in list(embed_s.parameters()) + list(embed_t.parameters()):
            p.grad = None
        v1, v2 = l2norm(embed_s(f_s)), l2norm(embed_t(f_t))
        out_v1, out_v2 = memory.forward(v1, v2, y, idx)
        s_loss = contrast_loss(out_v1, n)
        t_loss = contrast_loss(out_v2, n)
        (s_loss + t_loss).backward()
        steps.append({
            "anchors": anchors,
            "candidates": negatives,
            "student": entry(f_s),
            "teacher": entry(f_t),
            "student_loss": float(s_loss),
            "teacher_loss": float(t_loss),
            "z_student": memory.Z1,
            "z_teacher": memory.Z2,
            "student_grad": entry(f_s.grad),
            "embed_student_weight_grad": entry(embed_s.weight.grad),
            "embed_student_bias_grad": entry(embed_s.bias.grad),
            "embed_teacher_weight_grad": entry(embed_t.weight.grad),
            "embed_teacher_bias_grad": entry(embed_t.bias.grad),
            "student_memory_after": entry(memory.v1),
            "teacher_memory_after": entry(memory.v2),
        })
    return {
        "examples": n,
        "negatives": k,
        "feat_dim": dim,
        "temperature": 0.07,
        "momentum": 0.5,
        "labels": labels.tolist(),
        **start,
        "embed_student_weight": entry(embed_s.weight),
        "embed_student_bias": entry(embed_s.bias),
        "embed_teacher_weight": entry(embed_t.weight),
        "embed_teacher_bias": entry(embed_t.bias),
        "steps": steps,
    }


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    fixture = {
        "torch": torch.__version__,
        "at": at_case(),
        "rkd": rkd_case(),
        "fitnets": fitnets_case(),
        "crd": crd_case(),
    }
    (OUT / "reference.json").write_text(json.dumps(fixture, indent=1) + "\n")
    print("wrote", OUT / "reference.json")
