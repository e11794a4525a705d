"""Logistic heads over functionals: the model of the `expert` kind and of the general model.

One class-balanced multinomial logistic regression per functional set (:class:`Head`: the
fitting set's standardisation → Linear → log-softmax), fitted by full-batch L-BFGS
(:func:`fit_head`), each head either the fit whose L2 the validation rows score best or the
average of its fits over an L2 grid (:func:`fit_heads`), optionally pulled toward a pretrained
head (:class:`Prior`, fine-tuning); :class:`LogisticHeads` averages the heads'
log-probabilities. Speakers, speed copies and where the prior comes from are the recipe's
business (`stlser.kinds.expert`), not this module's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stlser.metrics import ua


class Head(nn.Module):
    """Standardise (fitting-set statistics) → Linear → log-softmax."""

    def __init__(self, d: int, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))
        self.linear = nn.Linear(d, n_classes)

    def forward(self, z: Tensor) -> Tensor:
        return torch.log_softmax(self.linear((z - self.center) / self.scale), -1)


class LogisticHeads(nn.Module):
    """functionals[B, D] (raw, the sets concatenated) → probabilities[B, C].

    ``forward`` applies the stored global normalisation (for speakers never seen);
    ``log_probs`` takes already-normalised functionals (crossval's per-speaker statistics).
    """

    def __init__(self, dims: list[int], n_classes: int) -> None:
        super().__init__()
        self.dims = list(dims)
        self.heads = nn.ModuleList(Head(d, n_classes) for d in dims)
        self.register_buffer("mean", torch.zeros(sum(dims)))
        self.register_buffer("std", torch.ones(sum(dims)))

    def log_probs(self, z: Tensor) -> Tensor:
        parts = torch.split(z, self.dims, dim=-1)
        return torch.stack([h(p) for h, p in zip(self.heads, parts, strict=True)]).mean(0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.log_probs((x - self.mean) / self.std), -1)

    def drop_inputs(self, mask: np.ndarray) -> None:
        """Zero the weights of the columns where `mask` (over every set's columns) is true: no
        answer depends on them any more."""
        cols = torch.as_tensor(np.asarray(mask, bool))
        with torch.no_grad():
            for h, part in zip(self.heads, torch.split(cols, self.dims), strict=True):
                h.linear.weight[:, part] = 0.0


class Prior:
    """A pretrained head as the starting point and L2 centre of a new fit (fine-tuning).

    `cols[c]` is the pretrained column of the new fit's label c (-1: a label the pretrained
    head lacks, whose weights start and are pulled toward 0). The pretrained head standardised
    with its own centre/scale; :meth:`weights` re-expresses it in the new fit's standardisation,
    so that before any step the new head computes exactly the pretrained logits.

    >>> h = Head(2, 3)
    >>> p = Prior(h, [2, -1])
    >>> W, b = p.weights(torch.zeros(2), torch.ones(2))
    >>> tuple(W.shape), tuple(b.shape)
    ((2, 2), (2,))
    """

    def __init__(self, head: Head, cols: list[int]) -> None:
        self.W = head.linear.weight.detach().T.clone()  # [D, C0]
        self.b = head.linear.bias.detach().clone()
        self.center = head.center.detach().clone()
        self.scale = head.scale.detach().clone()
        self.cols = list(cols)

    def weights(self, center: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """(W₀[D, C], b₀[C]) in the standardisation (x − center) / scale."""
        # logits = ((x - c0)/s0) W + b = ((x - c)/s) (W s/s0) + b + ((c - c0)/s0) W
        Wn = self.W * (scale / self.scale)[:, None]
        bn = self.b + ((center - self.center) / self.scale) @ self.W
        W0 = torch.zeros(len(center), len(self.cols))
        b0 = torch.zeros(len(self.cols))
        for c, j in enumerate(self.cols):
            if j >= 0:
                W0[:, c], b0[c] = Wn[:, j], bn[j]
        return W0, b0


#: Rank tolerance of the row-space basis (:class:`Design`): a row whose variance left after the
#: rows already taken is below this share of the largest row's squared norm is dependent.
RANK_TOL = 1e-10


class _RowsTimes(torch.autograd.Function):
    """``Z @ V`` for a tall Z[N, D] and a narrow V[D, C], given Z and its transpose Zt
    (contiguous): computed as ``(Vᵀ Zt)ᵀ`` and its gradient as ``(Gᵀ Z)ᵀ``, so that both
    products stream the matrices in memory order. torch's ``Z @ V`` and, worse, the backward's
    ``Zᵀ @ G`` do not (one CPU core, 12,000 × 6,373 × 6: 0.93 s → 0.13 s per step)."""

    @staticmethod
    def forward(ctx: Any, V: Tensor, Z: Tensor, Zt: Tensor) -> Tensor:
        ctx.Z = Z
        return (V.T @ Zt).T

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        return (g.T @ ctx.Z).T, None, None


class Design:
    """One head's fitting rows, prepared once for every fit on them (each L2 of a grid, with and
    without a prior): the fitting set's centre and scale, the standardised rows Z[N, D] and, when
    there are fewer rows than features and ``row_space``, a basis of their row space.

    The loss sees W only through Z·W and the penalty pulls the rest of W − W₀ to zero, so the
    optimum lies in W₀ + rowspace(Z). With an orthonormal basis Q[D, r] of that space the fit
    moves V[r, C] (W = W₀ + Q V, ‖W − W₀‖ = ‖V‖) and the products read Z·Q[N, r] instead of
    Z[N, D]. The optimum is the same; the path is not quite (torch's L-BFGS scales its first
    step by the gradient's L1 norm, which a rotation changes), so fits stopped at 100 iterations
    differ by float-level amounts to ~1e-3 in probability. The basis comes from a rank-revealing
    (pivoted) Cholesky factorisation of the Gram matrix, P Z Zᵀ Pᵀ = L Lᵀ (LAPACK ``dpstrf``),
    which also finds the rank: centred columns and per-speaker normalised rows make Z Zᵀ
    singular. With the r independent rows Zᵣ it picks and L's leading block Lᵣ: Q = Zᵣᵀ Lᵣ⁻ᵀ,
    hence Z·Q = Pᵀ L[:, :r] (no product with Z), and W − W₀ = Zᵣᵀ (Lᵣ⁻ᵀ V) is mapped back with
    one triangular solve. Rows whose remaining variance is below :data:`RANK_TOL` of the largest
    row's count as dependent.
    """

    def __init__(self, X: np.ndarray | Tensor, row_space: bool = True, fits: int = 1) -> None:
        Xt = torch.as_tensor(X, dtype=torch.float32)
        self.center, self.scale = Xt.mean(0), Xt.std(0).clamp_min(1e-5)
        self.Z = (Xt - self.center) / self.scale
        n, d = self.Z.shape
        self.L: Tensor | None = None
        self.Zr: Tensor | None = None
        Zv = self.Z
        # worth it when the rows are few against the features, or the basis serves several fits
        if row_space and (4 * n <= d or (fits >= 2 and 3 * n <= 2 * d)):
            from scipy.linalg import lapack

            Zd = self.Z.double()
            gram = (Zd @ Zd.T).numpy()
            tol = RANK_TOL * float(gram.diagonal().max())
            c, piv, rank, info = lapack.dpstrf(gram, tol=tol, lower=1)
            if info < 0:  # an illegal argument: cannot happen with a square float64 matrix
                raise RuntimeError(f"dpstrf failed (info {info})")
            order = torch.as_tensor(piv.astype(np.int64) - 1)
            L = torch.from_numpy(np.tril(c)[:, :rank])  # [N, r] in pivot order
            self.L, self.Zr = L[:rank], Zd[order[:rank]]
            Zv = torch.empty(n, rank, dtype=torch.float64)
            Zv[order] = L
            Zv = Zv.float()
        self.Zv = Zv
        self.Zvt = Zv.T.contiguous()  # both layouts: each product then reads memory in order

    def delta(self, V: Tensor) -> Tensor:
        """W − W₀ [D, C] of the fit's variables V."""
        if self.L is None:
            return V
        a = torch.linalg.solve_triangular(self.L.T, V.double(), upper=True)
        return (self.Zr.T @ a).float()


def fit_head(
    head: Head,
    X: np.ndarray,
    y: np.ndarray,
    l2: float,
    max_iter: int = 100,
    mask: np.ndarray | None = None,
    prior: Prior | None = None,
    weight: np.ndarray | None = None,
    row_space: bool = True,
    design: Design | None = None,
) -> Head:
    """Class-balanced multinomial logistic regression by full-batch L-BFGS (deterministic).

    The objective is the class-weighted mean cross-entropy + ``l2 · ||W − W₀||²``, W₀ = 0, or a
    pretrained head's weights (`prior`, fine-tuning: the fit starts there and is pulled toward
    it, so a small corpus moves it only as far as its evidence warrants). ``mask[N, C]`` (bool)
    limits each row's softmax to the labels its corpus has (multi-corpus training). ``weight[N]``
    weighs rows (e.g. extra corpora or pseudo-labels); classes are balanced by their weighted mass.

    With fewer rows than features and ``row_space`` the fit runs in the span of the rows
    (:class:`Design`): the same optimum at a fraction of the cost. `design`: `X` prepared once
    for several fits (`X` is then not read again).
    """
    dz = design if design is not None else Design(X, row_space)
    yt = torch.as_tensor(y, dtype=torch.long)
    n_classes = head.linear.out_features
    head.center.copy_(dz.center)
    head.scale.copy_(dz.scale)
    if weight is None:
        count = torch.bincount(yt, minlength=n_classes).float().clamp_min(1)
        w = (len(yt) / (n_classes * count))[yt]
    else:
        wt = torch.as_tensor(weight, dtype=torch.float32)
        w = wt / torch.zeros(n_classes).index_add_(0, yt, wt).clamp_min(1e-6)[yt]
    w = w / w.sum()
    W0 = torch.zeros(dz.Z.shape[1], n_classes)
    b0 = torch.zeros(n_classes)
    if prior is not None:
        W0, b0 = prior.weights(dz.center, dz.scale)
    offset = dz.Z @ W0 if prior is not None else 0.0
    V = torch.zeros(dz.Zv.shape[1], n_classes, requires_grad=True)
    b = b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [V, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    absent = None if mask is None else ~torch.as_tensor(mask, dtype=torch.bool)

    def closure() -> Tensor:
        opt.zero_grad()
        logits = _RowsTimes.apply(V, dz.Zv, dz.Zvt) + offset + b
        if absent is not None:
            logits = logits.masked_fill(absent, -1e4)
        ce = nn.functional.cross_entropy(logits, yt, reduction="none")
        loss = (ce * w).sum() + l2 * (V**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        W = W0 + dz.delta(V)
        head.linear.weight.copy_(W.T)
        head.linear.bias.copy_(b)
    return head


def average_heads(heads: list[Head]) -> Head:
    """One head whose logits are the mean of `heads`' logits (same fitting rows, so the same
    centre/scale). Exact for the model: its output is the softmax of the heads' mean
    log-probabilities, and each row's log-softmax constant cancels in that softmax.

    >>> a, b = Head(2, 2), Head(2, 2)
    >>> m = average_heads([a, b])
    >>> x = torch.randn(3, 2)
    >>> bool(torch.allclose(m.linear(x), (a.linear(x) + b.linear(x)) / 2, atol=1e-6))
    True
    """
    first = heads[0]
    if any(not torch.equal(h.center, first.center) for h in heads):
        raise ValueError("average_heads: the heads were fitted on different rows")
    out = Head(first.linear.in_features, first.linear.out_features)
    with torch.no_grad():
        out.center.copy_(first.center)
        out.scale.copy_(first.scale)
        out.linear.weight.copy_(torch.stack([h.linear.weight for h in heads]).mean(0))
        out.linear.bias.copy_(torch.stack([h.linear.bias for h in heads]).mean(0))
    return out


def balance(log_probs: Tensor, share: Tensor, iters: int = 100) -> Tensor:
    """One speaker's log-posteriors rescaled per class (Sinkhorn) so the classes sum to `share`.

    Acted corpora give every speaker every class; a speaker whose voice the heads read as, say,
    mostly angry gets that bias divided out, without any label. Each row stays a distribution.

    >>> lp = torch.log(torch.tensor([[0.9, 0.1], [0.8, 0.2]]))
    >>> balance(lp, torch.tensor([0.5, 0.5])).exp().sum(0).round(decimals=3).tolist()
    [1.0, 1.0]
    """
    target = torch.log(share.clamp_min(1e-12) * len(log_probs))
    lp = log_probs.double()
    for _ in range(iters):
        lp = lp + (target.double() - torch.logsumexp(lp, 0))
        lp = lp - torch.logsumexp(lp, 1, keepdim=True)
    return lp.to(log_probs.dtype)


def fit_heads(
    Z: np.ndarray,
    y: np.ndarray,
    dims: list[int],
    n_classes: int,
    train: np.ndarray,
    val: np.ndarray,
    grid: list[float],
    priors: list[Prior] | None = None,
    mode: str = "select",
    copies: tuple[np.ndarray, np.ndarray] | None = None,
    mask: np.ndarray | None = None,
    score: Callable[[Tensor, np.ndarray], float] | None = None,
    refit: np.ndarray | None = None,
) -> tuple[LogisticHeads, dict[str, Any]]:
    """Fit each head on the fold's training speakers (`train` + `val`; the test rows are never
    passed in). `Z` holds normalised functionals (the sets concatenated).

    ``mode="select"``: each head's L2 is the grid value with the best UA on the validation rows
    (fitting on `train`), then refit on train + val. ``mode="average"``: no choice; each head is
    the average (:func:`average_heads`) of its fits at every L2 of the grid on train + val (the
    choice on one or two validation speakers is noisy, and averaging won on validation speakers,
    docs/decisions.md); no validation UA is measured then.

    With `priors` (one per head: fine-tuning) each L2 is tried twice,
    pulling toward zero and toward the pretrained head: "select" picks the pair on validation
    (ties go to zero, so a pretrained model that does not help the validation speakers is not
    used), "average" averages all of them.

    `copies` (rows of `Z`: the speed-perturbed copies of the train rows, of the val rows) join
    every fit the rows they copy join; validation scores the original val rows only.

    Several corpora at once (the general model): ``mask[N, C]`` limits each row's softmax to
    its corpus's labels (:func:`fit_head`), ``score(log_probs, val)`` replaces the validation
    UA, and ``refit`` names the rows of the final fits (default: train + val + copies).
    """
    priors = priors or [None] * len(dims)
    model = LogisticHeads(dims, n_classes)
    fit = np.concatenate([train, val])
    if copies is not None:
        train = np.concatenate([train, copies[0]])
        fit = np.concatenate([fit, *copies])
    if refit is not None:
        fit = np.asarray(refit)
    bounds = np.cumsum([0, *dims])
    chosen, centre, val_ua = [], [], []

    def rows_mask(rows: np.ndarray) -> np.ndarray | None:
        return None if mask is None else mask[rows]

    def scored(lp: Tensor) -> float:
        return score(lp, val) if score is not None else ua(y[val], lp.argmax(1).numpy())

    val_lp = torch.zeros(len(val), n_classes)
    for i, head in enumerate(model.heads):
        Zi = Z[:, bounds[i] : bounds[i + 1]]
        cands = [(l2, None) for l2 in grid]
        if priors[i] is not None:
            cands += [(l2, priors[i]) for l2 in grid]
        if mode == "average":
            dz = Design(Zi[fit], fits=len(cands))
            fits = [
                fit_head(
                    Head(dims[i], n_classes),
                    Zi[fit],
                    y[fit],
                    l2,
                    mask=rows_mask(fit),
                    prior=p,
                    design=dz,
                )
                for l2, p in cands
            ]
            head.load_state_dict(average_heads(fits).state_dict())
            chosen.append(list(grid))
            centre.append("zero" if priors[i] is None else "zero+pretrained")
            continue
        # no validation speakers: the first L2, toward the pretrained head when there is one
        fallback = cands[len(grid) if priors[i] is not None else 0]
        best = (-1.0, fallback, None)
        tried = cands if len(val) else [fallback]
        dz = Design(Zi[train], fits=len(tried))
        for cand in tried:
            h = fit_head(
                Head(dims[i], n_classes),
                Zi[train],
                y[train],
                cand[0],
                mask=rows_mask(train),
                prior=cand[1],
                design=dz,
            )
            if not len(val):
                break
            with torch.no_grad():
                lp = h(torch.as_tensor(Zi[val], dtype=torch.float32))
            got = scored(lp)
            if got > best[0]:
                best = (got, cand, lp)
        l2, prior = best[1]
        chosen.append(l2)
        centre.append("zero" if prior is None else "pretrained")
        val_ua.append(best[0])
        if best[2] is not None:
            val_lp += best[2] / len(dims)
        fit_head(head, Zi[fit], y[fit], l2, mask=rows_mask(fit), prior=prior)
    if mode == "average":
        sel: dict[str, Any] = {"l2": chosen, "l2_mode": mode, "val_ua": None}
    else:
        fused = scored(val_lp) if len(val) else None
        sel = {"l2": chosen, "l2_mode": mode, "val_ua_heads": val_ua, "val_ua": fused}
    if any(p is not None for p in priors):
        sel["l2_centre"] = centre
    return model.eval(), sel
