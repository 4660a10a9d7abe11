# The two orientations of the float32 summary product, one thread, median of 60 (AVX2 AMD EPYC, 2 cores).
# OMP_NUM_THREADS=1 python benchmarks/results/ab_2026-12-03/summary_product_orientation.py
import torch, time, statistics as st
torch.set_num_threads(1)
def t(f, n=60):
    for _ in range(5): f()
    xs=[]
    for _ in range(n):
        a=time.perf_counter(); f(); xs.append(time.perf_counter()-a)
    return st.median(xs)*1e3
for G,K0,F,D,R in [(12,1000,3,64,6),(12,16000,3,64,6),(8,1024,3,128,8),(8,4096,3,128,8),(8,1024,3,64,8),(12,1000,3,128,6),(32,1000,3,64,6)]:
    stats=torch.randn(G,K0,F,D).bfloat16().float()
    left=torch.randn(G,R,F*D)
    flat=stats.reshape(G,K0,F*D)
    for rep in range(2):
        a=t(lambda: left@flat.transpose(1,2))
        b=t(lambda: (flat@left.transpose(1,2)).transpose(1,2))
        print(G,K0,F,D,R, f"rows-left {a:.3f}  pages-left {b:.3f}  ratio {b/a:.2f}")
