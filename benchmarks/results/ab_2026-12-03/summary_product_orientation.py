"""The two orientations of the float32 summary product, one thread, median of 60 (output beside it:
AVX2-only AMD EPYC, 2 cores, quiet).

    OMP_NUM_THREADS=1 python benchmarks/results/ab_2026-12-03/summary_product_orientation.py
"""

import statistics
import time

import torch


def median_ms(f, n: int = 60) -> float:
    for _ in range(5):
        f()
    xs = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        xs.append(time.perf_counter() - t0)
    return statistics.median(xs) * 1e3


def main() -> None:
    torch.set_num_threads(1)
    shapes = [(12, 1000, 3, 64, 6), (12, 16000, 3, 64, 6), (8, 1024, 3, 128, 8), (8, 4096, 3, 128, 8),
              (8, 1024, 3, 64, 8), (12, 1000, 3, 128, 6), (32, 1000, 3, 64, 6)]
    for G, K0, F, D, R in shapes:  # rows G, pages K0, F summaries of D, R query rows
        flat = torch.randn(G, K0, F * D).bfloat16().float()
        left = torch.randn(G, R, F * D)
        for _ in range(2):
            a = median_ms(lambda: left @ flat.transpose(1, 2))  # noqa: B023
            b = median_ms(lambda: (flat @ left.transpose(1, 2)).transpose(1, 2))  # noqa: B023
            print(G, K0, F, D, R, f"rows-left {a:.3f}  pages-left {b:.3f}  ratio {b / a:.2f}")


if __name__ == "__main__":
    main()
