"""Pure distillation loss functions (tensor in, scalar tensor out).

Shapes: logits ``(B, K, *spatial)`` with ``K`` classes on axis 1; features ``(B, C, *spatial)``
with channels on axis 1; labels ``(B, *spatial)`` or ``(B, 1, *spatial)`` integer class ids;
embeddings ``(N, D)``. Each function cites the method it comes from and the equation in
``docs/methods.md`` (sections 1-4). They are deliberately free of module state so they can be
tested on their own and reused by several methods.

None of these functions detaches anything the caller passes in (except where the method's
equation says a factor is a constant): detach a frozen teacher at the call site.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import BarlowTwinsLoss


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """Temperature-softened KL divergence of Hinton et al. (2015), "Distilling the knowledge in
    a neural network", eq. for the soft-target loss, scaled by T² so its gradient magnitude does
    not shrink as T grows:

    ``T² · mean_{b, voxels} Σ_k p_t,k (log p_t,k − log p_s,k)``, ``p = softmax(logits / T)`` over K.

    Computed with ``log_softmax`` on both sides, so it stays finite for logits of ±1e4, is exactly
    0 when the logits are equal and is invariant to adding a constant to all K logits of a voxel.
    Gradients flow into ``teacher_logits`` too if they require grad; detach a frozen teacher.

    Args:
        student_logits: ``(B, K, *spatial)``.
        teacher_logits: same shape as ``student_logits``.
        temperature: ``T > 0``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"soft_kl: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    if temperature <= 0:
        raise ValueError(f"soft_kl: temperature must be > 0, got {temperature}")
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl_per_voxel = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return temperature**2 * kl_per_voxel.mean()


# ---------------------------------------------------------------------------------------------
# Input checks shared by the functions below
# ---------------------------------------------------------------------------------------------


def _check_same_shape(fn: str, name_a: str, a: torch.Tensor, name_b: str,
                      b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{fn}: {name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} differ in shape"
        )


def _check_paired_samples(fn: str, name_a: str, a: torch.Tensor, name_b: str,
                          b: torch.Tensor) -> None:
    """``a`` is ``(N, D)`` and ``b`` has the same shape (paired embeddings)."""
    if a.ndim != 2:
        raise ValueError(f"{fn}: {name_a} must be (N, D), got shape {tuple(a.shape)}")
    _check_same_shape(fn, name_a, a, name_b, b)


def _check_channels_first(fn: str, name: str, x: torch.Tensor) -> None:
    if x.ndim < 2:
        raise ValueError(f"{fn}: {name} must be (B, C, *spatial), got shape {tuple(x.shape)}")


def _check_positive(fn: str, name: str, value: float) -> None:
    if not value > 0:  # also rejects NaN
        raise ValueError(f"{fn}: {name} must be > 0, got {value}")


def _class_indices(fn: str, name: str, labels: torch.Tensor,
                   logits: torch.Tensor) -> torch.Tensor:
    """Validate integer ``labels`` against ``logits (B, K, *spatial)``; return ``(B, *spatial)``.

    ``(B, 1, *spatial)`` (the trainer's target layout) is squeezed on axis 1.
    """
    expected = (logits.shape[0], *logits.shape[2:])
    if labels.ndim == logits.ndim and labels.shape[1] == 1:
        labels = labels.squeeze(1)
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"{fn}: {name} has shape {tuple(labels.shape)}, expected {expected} or "
            f"{(expected[0], 1, *expected[1:])} to match logits {tuple(logits.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{fn}: {name} must hold integer class indices, got dtype {labels.dtype}")
    n_classes = logits.shape[1]
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"{fn}: {name} values must lie in [0, {n_classes}) for K={n_classes} logits, got "
            f"range [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.long()


# ---------------------------------------------------------------------------------------------
# KD-Net (Hu et al., MICCAI 2020), methods.md §1.3
# ---------------------------------------------------------------------------------------------


def latent_kl(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """KD-Net latent distillation term (Hu et al., MICCAI 2020; methods.md §1.3, λ_lat term):

    ``mean_{b, locations} KL(σ_ch(h_t) ‖ σ_ch(h_s))``, with ``σ_ch`` a softmax over the channel
    axis at each location and no temperature.

    Reduction: a **mean** over batch and locations (the KL is summed over channels). The
    third-party ``feats_KL`` sums over locations and divides by the batch size only; that scales
    with the bottleneck grid, so a per-location mean is used to keep the weight portable across
    backbones (methods.md §1.10 item 2). Multiply by the number of locations to recover it.

    Args:
        student_feat: student bottleneck features ``(B, C, *spatial)``.
        teacher_feat: teacher bottleneck features, same shape (detach a frozen teacher).

    Returns:
        Scalar tensor ``>= 0``; exactly 0 when both inputs are equal.
    """
    fn = "latent_kl"
    _check_channels_first(fn, "student_feat", student_feat)
    _check_same_shape(fn, "student_feat", student_feat, "teacher_feat", teacher_feat)
    # log_softmax on both sides keeps the KL finite for very large activations.
    log_p_s = F.log_softmax(student_feat.float(), dim=1)
    log_p_t = F.log_softmax(teacher_feat.float(), dim=1)
    kl_per_location = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return kl_per_location.mean()


# ---------------------------------------------------------------------------------------------
# UMMKD (Dou et al., IEEE TMI 2020), methods.md §2.3
# ---------------------------------------------------------------------------------------------


def _class_mean_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
    """Per-class sums of logit vectors pooled over the batch, and the per-class voxel counts.

    Args:
        logits: ``(B, K, *spatial)``.
        labels: ``(B, *spatial)`` int64 in ``[0, K)``.

    Returns:
        ``(sums (K, K), counts (K,))``: row ``c`` of ``sums`` is the sum of the K-vectors of
        logits over voxels labelled ``c``.
    """
    n_classes = logits.shape[1]
    flat = logits.float().movedim(1, -1).reshape(-1, n_classes)  # (voxels, K)
    index = labels.reshape(-1)
    # index_add (a scatter-sum) instead of a one-hot matmul: no (voxels, K) one-hot buffer.
    sums = flat.new_zeros(n_classes, n_classes).index_add(0, index, flat)
    counts = torch.bincount(index, minlength=n_classes)
    return sums, counts


def class_prototype_kl(logits_a: torch.Tensor, labels_a: torch.Tensor, logits_b: torch.Tensor,
                       labels_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """UMMKD knowledge-distillation loss between the "derived prediction distributions" of two
    unpaired streams (Dou et al., IEEE TMI 2020, "Unpaired multi-modal segmentation via knowledge
    distillation"; methods.md §2.3, L_kd):

    ``z̄^m_c = mean of the pre-softmax logit vectors over voxels with label c`` (pooled over the
    whole batch of stream m), ``q^m_c = softmax(z̄^m_c / τ)``, and
    ``L = mean_{c ∈ S} ½[KL(q^a_c ‖ q^b_c) + KL(q^b_c ‖ q^a_c)]``,
    where ``S`` is the set of classes present in **both** streams' labels.

    Deviation from the original code (methods.md §2.9 item 1): the code averaged over all C
    classes and divided the per-class sum by ``count + ε`` (ε = 1e-6) without a guard, so a class
    absent from a batch got a uniform ``q_c`` that was still compared. Here absent classes are
    skipped and the divisor is the exact count. When every class is present in both streams the
    two agree up to the ε. If no class is shared the result is a zero that still carries a
    (zero) gradient to both inputs. Background is included like any other class.

    Gradients flow into both streams' logits (the original has no stop-gradient).

    Args:
        logits_a: stream a logits ``(B_a, K, *spatial_a)``.
        labels_a: stream a labels ``(B_a, *spatial_a)`` or ``(B_a, 1, *spatial_a)``, ints in [0, K).
        logits_b: stream b logits ``(B_b, K, *spatial_b)``; batch and spatial size may differ from
            stream a (unpaired setting), ``K`` may not.
        labels_b: stream b labels, shaped like ``logits_b`` without the class axis.
        temperature: ``τ > 0`` (2.0 in the original code).

    Returns:
        Scalar tensor ``>= 0``.
    """
    fn = "class_prototype_kl"
    _check_channels_first(fn, "logits_a", logits_a)
    _check_channels_first(fn, "logits_b", logits_b)
    if logits_a.shape[1] != logits_b.shape[1]:
        raise ValueError(
            f"{fn}: logits_a has {logits_a.shape[1]} classes and logits_b has "
            f"{logits_b.shape[1]}; both streams must share K"
        )
    _check_positive(fn, "temperature", temperature)
    labels_a = _class_indices(fn, "labels_a", labels_a, logits_a)
    labels_b = _class_indices(fn, "labels_b", labels_b, logits_b)

    sums_a, counts_a = _class_mean_logits(logits_a, labels_a)
    sums_b, counts_b = _class_mean_logits(logits_b, labels_b)
    shared = (counts_a > 0) & (counts_b > 0)
    if not bool(shared.any()):
        # Keep the graph connected so callers can always call backward().
        return (sums_a.sum() + sums_b.sum()) * 0.0
    mean_a = sums_a[shared] / counts_a[shared].unsqueeze(1)
    mean_b = sums_b[shared] / counts_b[shared].unsqueeze(1)
    log_q_a = F.log_softmax(mean_a / temperature, dim=1)
    log_q_b = F.log_softmax(mean_b / temperature, dim=1)
    # ½[KL(a‖b) + KL(b‖a)] = ½ Σ_k (q_a − q_b)(log q_a − log q_b), per shared class.
    sym_kl = 0.5 * ((log_q_a.exp() - log_q_b.exp()) * (log_q_a - log_q_b)).sum(dim=1)
    return sym_kl.mean()


# ---------------------------------------------------------------------------------------------
# PMKL (Chen et al., IEEE TMI 2022), methods.md §3.3
# ---------------------------------------------------------------------------------------------

# Probability floor of the original soft CE, ``log(clip(p, 0.005, 1))`` (PMKL ``losses.py``).
PMKL_PROB_FLOOR = 0.005


def _hard_label_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-voxel ``−log softmax(logits)_y``: logits ``(B, K, *spatial)``, labels ``(B, *spatial)``.

    Same value as ``F.cross_entropy(reduction="none")``; written as a gather because torch
    lists CUDA ``NLLLoss`` among the ops that raise under ``torch.use_deterministic_algorithms``.
    """
    return -F.log_softmax(logits, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)


def regularized_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """PMKL regularized KD loss L_rkd (Chen et al., IEEE TMI 2022, "Learning with privileged
    multimodal knowledge for unimodal segmentation"; methods.md §3.3):

    - ``ℓ_s(i) = −log softmax(z_s)_{i, y_i}`` and ``ℓ_t(i)`` likewise: each network's plain
      (unweighted, unclipped) hard-label cross-entropy at T = 1, as
      ``tf.nn.softmax_cross_entropy_with_logits`` in the original code;
    - ``r_i = max(0, ℓ_s(i) − ℓ_t(i)) · 1[argmax_k z_t,ik = y_i]``, a constant (no gradient);
    - ``h_i = −Σ_k σ_T(z_t)_ik · log clip(σ_T(z_s)_ik, 0.005, 1)``, no T² factor;
    - ``L = Σ_i r_i h_i / Σ_i r_i`` with sums over every voxel of the batch.

    ``log clip(p, 0.005, 1)`` is computed as ``clamp(log_softmax, log 0.005, 0)``; the two are
    equal because log is monotone, and this form cannot underflow to ``log 0``. As in the
    original, the clip stops the gradient where ``p_s < 0.005``.

    Deviation: the original divides by ``Σ r_i`` with no guard; here the loss is exactly 0 (with
    finite, zero gradients) when ``Σ r_i = 0``, e.g. when the teacher is wrong everywhere.

    Args:
        student_logits: ``(B, K, *spatial)``.
        teacher_logits: same shape (detach a frozen teacher; the weights ``r`` are always
            detached, ``h`` is not).
        labels: ``(B, *spatial)`` or ``(B, 1, *spatial)`` integer class ids in ``[0, K)``.
        temperature: ``T > 0`` (10 in the original code).

    Returns:
        Scalar tensor ``>= 0``.
    """
    fn = "regularized_kd"
    _check_channels_first(fn, "student_logits", student_logits)
    _check_same_shape(fn, "student_logits", student_logits, "teacher_logits", teacher_logits)
    _check_positive(fn, "temperature", temperature)
    labels = _class_indices(fn, "labels", labels, student_logits)
    z_s = student_logits.float()
    z_t = teacher_logits.float()

    with torch.no_grad():
        ce_s = _hard_label_ce(z_s, labels)  # (B, *spatial)
        ce_t = _hard_label_ce(z_t, labels)
        # max(dim).indices == argmax(dim) (first maximum on ties), but ~8x faster on the CPU
        # when the class axis is not the last one.
        teacher_right = z_t.max(dim=1).indices == labels
        weight = (ce_s - ce_t).clamp_min(0.0) * teacher_right

    log_p_s = F.log_softmax(z_s / temperature, dim=1).clamp(math.log(PMKL_PROB_FLOOR), 0.0)
    p_t = F.softmax(z_t / temperature, dim=1)
    soft_ce = -(p_t * log_p_s).sum(dim=1)  # (B, *spatial), finite thanks to the clamp

    total_weight = weight.sum()
    # With Σr = 0 the numerator is exactly 0 (all r are 0, h is finite), so dividing by 1
    # returns 0 with zero gradients; this avoids a host sync on the GPU and the 0/0 NaN.
    safe_total = torch.where(total_weight > 0, total_weight, torch.ones_like(total_weight))
    return (weight * soft_ce).sum() / safe_total


def contrastive_kd(student_emb: torch.Tensor, teacher_emb: torch.Tensor,
                   margin: float) -> torch.Tensor:
    """PMKL contrastive KD loss L_ckd (Chen et al., IEEE TMI 2022; methods.md §3.3), the
    Hadsell-Chopra-LeCun contrastive loss as computed by TF's
    ``tf.contrib.losses.metric_learning.contrastive_loss`` in the original code:

    ``L = (1/N²) Σ_{i,j} [ 1[i=j] d_ij² + 1[i≠j] max(0, m − d_ij)² ]``,
    ``d_ij = ‖ê^s_i − ê^t_j‖₂`` with ``ê`` the L2-normalised embeddings (normalised here).

    Only cross-network pairs are used (student i vs teacher j), N positives and N(N−1)
    negatives, averaged over all N² pairs. There is no ½ factor: the TF function (and so
    methods.md) has none, unlike Hadsell et al.'s paper.

    Choice: the gradient of ``d`` at ``d = 0`` is undefined (TF's ``sqrt`` gives NaN there);
    a negative pair at exactly zero distance gets a zero gradient here instead.

    Args:
        student_emb: ``(N, D)`` student projections.
        teacher_emb: ``(N, D)`` teacher projections, pair ``i`` with student ``i``.
        margin: ``m >= 0`` (1.0 in the original code; unit vectors have ``d <= 2``).

    Returns:
        Scalar tensor ``>= 0``.
    """
    fn = "contrastive_kd"
    _check_paired_samples(fn, "student_emb", student_emb, "teacher_emb", teacher_emb)
    if not margin >= 0:
        raise ValueError(f"{fn}: margin must be >= 0, got {margin}")
    e_s = F.normalize(student_emb.float(), dim=1)
    e_t = F.normalize(teacher_emb.float(), dim=1)
    # Explicit differences (N² · D values, N is a small batch) rather than torch.cdist, whose
    # matmul shortcut loses precision near d = 0 and whose backward is NaN at d = 0.
    sq_dist = (e_s.unsqueeze(1) - e_t.unsqueeze(0)).pow(2).sum(dim=2)  # (N, N)
    is_zero = sq_dist == 0
    dist = torch.where(is_zero, 0.0, torch.where(is_zero, 1.0, sq_dist).sqrt())
    positive = torch.eye(sq_dist.shape[0], dtype=torch.bool, device=sq_dist.device)
    per_pair = torch.where(positive, sq_dist, (margin - dist).clamp_min(0.0).pow(2))
    return per_pair.mean()


# ---------------------------------------------------------------------------------------------
# Choi et al. (CMPB 2023), methods.md §4.3: Barlow Twins
# ---------------------------------------------------------------------------------------------


def barlow_twins(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float) -> torch.Tensor:
    """Barlow Twins redundancy-reduction loss (Zbontar et al., ICML 2021) used by Choi et al.
    (CMPB 2023) between teacher and student latents; methods.md §4.3:

    ``C_kl = (1/N) Σ_n û_nk v̂_nl``, ``L = Σ_k (1 − C_kk)² + λ Σ_k Σ_{l≠k} C_kl²``,
    each column standardised over the N samples.

    Delegates to ``monai.losses.BarlowTwinsLoss`` so the field's implementation is used. Note
    that MONAI standardises with the *unbiased* std plus 1e-6 (``(x − μ) / (std + 1e-6)``),
    whereas the Facebook reference uses a non-affine BatchNorm (biased variance, ε inside the
    square root); the two differ noticeably only for small N. The loss is symmetric in its
    arguments. How the latents become ``(N, D)`` (e.g. voxels as samples, methods.md §4.10
    item 1) is the caller's choice.

    Args:
        z_a: ``(N, D)``, N >= 2 samples (e.g. teacher latents).
        z_b: ``(N, D)`` (e.g. student latents).
        lambd: off-diagonal weight λ (MONAI and the reference default to 5e-3).

    Returns:
        Scalar tensor ``>= 0``.
    """
    fn = "barlow_twins"
    _check_paired_samples(fn, "z_a", z_a, "z_b", z_b)
    if z_a.shape[0] < 2:
        raise ValueError(f"{fn}: needs N >= 2 samples to standardise, got N={z_a.shape[0]}")
    return BarlowTwinsLoss(lambd=lambd)(z_a, z_b)
