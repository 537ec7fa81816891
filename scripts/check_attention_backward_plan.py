#!/usr/bin/env python3
"""Emulates, in numpy, the launch plan of attention_backward_cuda (kernels.cu) without a GPU.

Every cuBLAS call is replayed with its exact arguments (transposes, m/n/k, leading dimensions,
batch strides, alpha/beta) on flat buffers with cuBLAS's column-major semantics, and every kernel
with its exact index arithmetic; the buffers are laid out as the workspace is. The resulting dQ,
dK and dV are compared with the attention backward computed directly in float64. This checks
the plan's reasoning (which matrix is which, the strides that select a head, the per-block row
indexing, causal masks, the sums over query blocks); it cannot check cuBLAS or the CUDA compiler,
which only a GPU run of `tests/run_tests --backend cuda backward` does.

If you change the host code of attention_backward_cuda, change the replay below to match.

    python3 scripts/check_attention_backward_plan.py
"""
import numpy as np


def gemm_strided_batched(trans_a, trans_b, m, n, k, alpha, A, a0, lda, stride_a, B, b0, ldb, stride_b, beta, C, c0,
                         ldc, stride_c, batch, out_dtype=np.float32):
    """cublasGemmStridedBatchedEx on flat arrays (offsets in elements), f32 compute."""
    for i in range(batch):
        def op(X, x0, ld, trans, rows, cols):
            # op(X) is rows x cols; X stored column-major with leading dimension ld
            r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            idx = x0 + (c + r * ld if trans else r + c * ld)
            return X[idx].astype(np.float32)
        a = op(A, a0 + i * stride_a, lda, trans_a, m, k)
        b = op(B, b0 + i * stride_b, ldb, trans_b, k, n)
        r, c = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
        idx = c0 + i * stride_c + r + c * ldc
        prod = alpha * (a @ b)
        if beta != 0.0:
            prod = prod + beta * C[idx].astype(np.float32)
        C[idx] = prod.astype(out_dtype)


def store_heads(dst, dst0, acc, L, HS, ld, dt):
    """store_heads_kernel: acc[h][j][e] (f32) to dst[dst0 + j*ld + h*HS + e], rounded to dt."""
    i = np.arange(acc.size)
    h, j, e = i // (L * HS), i % (L * HS) // HS, i % HS
    dst[dst0 + j * ld + h * HS + e] = acc[i].astype(dt)


def attention_backward_plan(dout, q, k, v, out, N, NH, Lq, Lk, HS, causal, dt, budget):
    """Replays attention_backward_cuda; inputs are flat arrays of dtype dt, (N, L, NH*HS) rows."""
    D = NH * HS
    scale = np.float32(1.0 / np.sqrt(HS))
    low = dt != np.float32
    dq = np.zeros(N * Lq * D, dt)
    dk = np.zeros(N * Lk * D, dt)
    dv = np.zeros(N * Lk * D, dt)
    block = budget // (NH * Lk)
    block = 1 if block < 1 else Lq if block > Lq else block
    n_blocks = (Lq + block - 1) // block
    block = (Lq + n_blocks - 1) // n_blocks
    n_acc = NH * Lk * HS
    head_stride, acc_stride = HS, Lk * HS
    for n in range(N):
        k_n = n * Lk * D
        v_n = n * Lk * D
        dk_acc = np.zeros(n_acc, np.float32)
        dv_acc = np.zeros(n_acc, np.float32)
        for i0 in range(0, Lq, block):
            bq = min(Lq - i0, block)
            keys = i0 + bq if causal else Lk
            scores_stride = bq * keys
            n_block = NH * bq * keys
            row0 = (n * Lq + i0) * D
            probs = np.zeros(n_block, np.float32)
            dprobs = np.zeros(n_block, np.float32)
            gemm_strided_batched(True, False, keys, bq, HS, scale, k, k_n, D, head_stride, q, row0, D, head_stride, 0.0,
                                 probs, 0, keys, scores_stride, NH)
            # attention_probs_kernel: one row per (head, query of the block)
            for row in range(NH * bq):
                s = probs[row * keys:(row + 1) * keys]
                query = i0 + row % bq
                visible = min(query + 1, keys) if causal else keys
                mx = s[:visible].max()
                e = np.exp(s[:visible] - mx)
                p = np.zeros(keys, np.float32)
                p[:visible] = e * (np.float32(1.0) / e.sum())
                s[:] = p
            p_dt = probs.astype(dt) if low else probs
            gemm_strided_batched(False, True, HS, keys, bq, 1.0, dout, row0, D, head_stride, p_dt, 0, keys,
                                 scores_stride, 1.0, dv_acc, 0, HS, acc_stride, NH)
            gemm_strided_batched(True, False, keys, bq, HS, 1.0, v, v_n, D, head_stride, dout, row0, D, head_stride, 0.0,
                                 dprobs, 0, keys, scores_stride, NH)
            # attention_row_dot_kernel
            row_dot = np.zeros(NH * bq, np.float32)
            for row in range(NH * bq):
                at = row0 + (row % bq) * D + (row // bq) * HS
                row_dot[row] = np.dot(dout[at:at + HS].astype(np.float32), out[at:at + HS].astype(np.float32))
            # attention_dscores_kernel
            i = np.arange(n_block)
            dprobs[:] = probs * (dprobs - row_dot[i // keys])
            ds_dt = dprobs.astype(dt) if low else dprobs
            dq_blk_acc = np.zeros(NH * bq * HS, np.float32)
            gemm_strided_batched(False, False, HS, bq, keys, scale, k, k_n, D, head_stride, ds_dt, 0, keys,
                                 scores_stride, 0.0, dq_blk_acc, 0, HS, bq * HS, NH)
            store_heads(dq, row0, dq_blk_acc, bq, HS, D, dt)
            gemm_strided_batched(False, True, HS, keys, bq, scale, q, row0, D, head_stride, ds_dt, 0, keys,
                                 scores_stride, 1.0, dk_acc, 0, HS, acc_stride, NH)
        store_heads(dk, n * Lk * D, dk_acc, Lk, HS, D, dt)
        store_heads(dv, n * Lk * D, dv_acc, Lk, HS, D, dt)
    return dq, dk, dv


def attention_backward_reference(dout, q, k, v, N, NH, Lq, Lk, HS, causal):
    """The attention backward in float64, head by head, from the formulas."""
    def heads(x, L):
        return x.astype(np.float64).reshape(N, L, NH, HS).transpose(0, 2, 1, 3)
    Q, K, V, dO = heads(q, Lq), heads(k, Lk), heads(v, Lk), heads(dout, Lq)
    S = Q @ K.transpose(0, 1, 3, 2) / np.sqrt(HS)
    if causal:
        S = np.where(np.tril(np.ones((Lq, Lk), bool)), S, -np.inf)
    P = np.exp(S - S.max(-1, keepdims=True))
    P /= P.sum(-1, keepdims=True)
    O = P @ V
    dV = P.transpose(0, 1, 3, 2) @ dO
    dP = dO @ V.transpose(0, 1, 3, 2)
    dS = P * (dP - (dO * O).sum(-1, keepdims=True))
    dQ = dS @ K / np.sqrt(HS)
    dK = dS.transpose(0, 1, 3, 2) @ Q / np.sqrt(HS)
    rows = lambda x, L: x.transpose(0, 2, 1, 3).reshape(-1)
    return rows(dQ, Lq), rows(dK, Lk), rows(dV, Lk), rows(O, Lq)


def main():
    rng = np.random.default_rng(0)
    cases = [  # N, NH, Lq, Lk, HS, causal, dtype, score budget (floats: sets the query block)
        (2, 3, 7, 5, 4, False, np.float32, 1 << 25),   # one block
        (2, 3, 7, 5, 4, False, np.float32, 3 * 5 * 3),  # at most 3 queries a block: 3, 3, 1 -> 3, 3, 1
        (2, 3, 10, 5, 4, False, np.float32, 3 * 5 * 4),  # at most 4: 4, 4, 2 -> 4, 3, 3
        (1, 2, 6, 6, 8, True, np.float32, 2 * 6 * 2),   # causal, blocks of 2
        (1, 4, 9, 9, 4, True, np.float32, 1),           # causal, one query a block
        (2, 2, 5, 11, 8, False, np.float16, 2 * 11 * 2),
        (1, 3, 8, 8, 4, True, np.float16, 3 * 8 * 3),
    ]
    worst = 0.0
    failed = 0
    for (N, NH, Lq, Lk, HS, causal, dt, budget) in cases:
        D = NH * HS
        q = rng.standard_normal(N * Lq * D).astype(dt)
        k = rng.standard_normal(N * Lk * D).astype(dt)
        v = rng.standard_normal(N * Lk * D).astype(dt)
        dout = rng.standard_normal(N * Lq * D).astype(dt)
        dq_ref, dk_ref, dv_ref, out = attention_backward_reference(dout, q, k, v, N, NH, Lq, Lk, HS, causal)
        dq, dk, dv = attention_backward_plan(dout, q, k, v, out.astype(dt), N, NH, Lq, Lk, HS, causal, dt, budget)
        tol = 2e-5 if dt == np.float32 else 2e-2
        for name, got, ref in (("dq", dq, dq_ref), ("dk", dk, dk_ref), ("dv", dv, dv_ref)):
            err = np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30)
            worst = max(worst, err / tol)
            ok = err <= tol
            failed += not ok
            print(f"N={N} NH={NH} Lq={Lq} Lk={Lk} HS={HS} causal={int(causal)} {np.dtype(dt).name:7s} "
                  f"budget={budget:>8d} {name}: max error / max |ref| = {err:.2e} (tol {tol:.0e}) "
                  f"{'ok' if ok else 'FAIL'}")
    print(f"worst error: {worst:.0%} of its tolerance")
    print("PASS" if failed == 0 else f"FAIL ({failed})")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
