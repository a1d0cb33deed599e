# Cells for the "Explore: chunk size" section of book/three_forms.ipynb (issue 5), to paste by hand.
#
# Each "# %%" block below is one cell (jupytext "percent" format): "# %% [markdown]" blocks are markdown
# cells (drop the leading "# " of each line), "# %% tags=[...]" gives the cell's tags. They replace the
# chapter's placeholder markdown cell ("## Explore: chunk size ... An interactive explorer will go here.")
# and its placeholder code cell ("# chunk-size explorer goes here (issue 5)"). They use `device` and
# `torch`, which the chapter's first code cell defines, and nothing else from the chapter.
#
# Measured here (2-core CPU, shared and busy, load average 5-9): the three code cells took 34-52 s wall
# (13-16 s CPU) under nbval, most of it the timing cell; the explorer itself takes ~5-10 s and stores
# ~450 KB of widget state (8 frames). Then run scripts/regen_notebooks.py book/three_forms.ipynb.

# %% [markdown]
# ## Explore: chunk size
#
# The chunk size $B$ decides how the chunkwise form splits its work. An entry $(n, m)$ with $m \le n$ of
# $QK^\top \odot D$ is either computed inside its chunk, by the chunk's own small parallel product (blue in
# the explorer), or never computed at all: its contribution reaches position $n$ through the state carried
# from the earlier chunks (orange). Larger chunks move work from the state to the parallel products: the
# FLOPs grow with $B$ (per position, the inner part costs $2B(d_k + d_v)$ against $4 d_k d_v$ for reading
# and updating the state), while the number of sequential steps, one per chunk, falls as $T/B$.
#
# The explorer uses $T = 1024$ and one head of the paper's 6.7B model ($d_k = 256$, $d_v = 512$); $C$ in it is
# the chunk size $B$. Two differences from the table above. FLOPs here count only the matrix products (the
# convention of `retnet_mini.bench.chunkwise_flops`, behind the benchmark's GFLOP/s), so they are a little
# lower. And memory is shown twice: "chunkwise" is a loop that handles one chunk at a time (as in the table
# above), "chunkwise, batched" (the tables' "batched memory") is `chunkwise_retention` as the package writes
# it, which processes all whole chunks at once for speed and so holds every chunk's $B \times B$ scores and
# two $d_k \times d_v$ states per chunk. Small chunks make that version hold more than the parallel form.
# Move the slider, or press play; the views were drawn in advance, so this works on the website too.

# %%
from retnet_mini import viz

chunk_sizes = [16, 32, 64, 96, 128, 256, 512, 1024]      # 96 does not divide 1024: a short last chunk
chunk_explorer = viz.chunk_size_explorer(length=1024, chunk_sizes=chunk_sizes, d_k=256, d_v=512)
chunk_explorer

# %% [markdown]
# The numbers behind the views (each view shows its own row under the figure), and the same model at
# longer sequences, where the parallel form's $T^2$ takes over:

# %%
print(viz.chunk_table(1024, chunk_sizes))
for T_long in (8192, 65536):
    print()
    print(viz.chunk_table(T_long, [64, 256, 512, 1024, 2048]))

# %% [markdown]
# FLOPs are not time. The next cell times `chunkwise_retention` for the same chunk sizes on this machine:
# two heads of that shape, one sequence of $T = 1024$ in float32 ($T = 8192$ on a GPU), each chunk size called
# in turn, repeatedly, and the median kept (`retnet_mini.bench.interleaved_medians`), then the FLOPs of the
# model divided by the time. The numbers change from machine to machine and run to run (the cell's output
# is not compared in the book's tests). Expect both ends to be slow: very small chunks pay for many
# sequential steps of small operations and for the many states the batched version keeps; very large chunks
# for the $B^2$ inner products.

# %% tags=["nbval-ignore-output"]
from retnet_mini import chunkwise_retention, paper_log_decay
from retnet_mini.bench import interleaved_medians

T_time = 1024 if device == "cpu" else 8192
H_time, dk_time, dv_time = 2, 256, 512
torch.manual_seed(0)
q_t = torch.randn(1, H_time, T_time, dk_time, device=device) * dk_time ** -0.5
k_t = torch.randn(1, H_time, T_time, dk_time, device=device) * dk_time ** -0.5
v_t = torch.randn(1, H_time, T_time, dv_time, device=device)
ld_t = paper_log_decay(H_time, dtype=torch.float32).to(device)

with torch.no_grad():
    medians = interleaved_medians(
        {C: (lambda C=C: chunkwise_retention(q_t, k_t, v_t, ld_t, C)) for C in chunk_sizes},
        repeats=3, device=torch.device(device), warmup=0)      # the median of 3 discards a cold first call
print(f"chunkwise_retention on {device}: T = {T_time}, {H_time} heads, d_k = {dk_time}, d_v = {dv_time}, "
      f"float32, median of 3")
print(f"{'chunk':>6} {'ms':>9} {'GFLOP/s':>9}")
for C in chunk_sizes:
    flops = H_time * viz.chunkwise_flops_exact(T_time, dk_time, dv_time, C)
    print(f"{C:>6} {medians[C] * 1e3:>9.2f} {flops / medians[C] / 1e9:>9.1f}")
