# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A pretraining run
#
# Loss and learning-rate curves from the run's logs, embeddings of held-out (test split) images, the
# relation SoftCon trains for (embedding similarity following label similarity) and nearest
# neighbours. Set `SOFTCON_RUN` to look at another run (default: the one `make run` trains); its
# archive is the one named in the run's `training_data.json`.

# %%
import os
from pathlib import Path

import numpy as np

from pipeline.figures import show
from train.figures import curves_figure, embedding_figure, neighbours_figure, read_run_scalars, similarity_figure
from train.run_embeddings import embed_split, nearest_neighbours, similarity_pairs

REPO = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
RUN = os.environ.get("SOFTCON_RUN", str(REPO / "runs" / "softcon-mini"))

scalars = read_run_scalars(RUN)
steps, loss = scalars["train/loss"]
print(f"run {RUN}: {len(steps)} logged steps, loss {loss[0]:.4f} → {loss[-1]:.4f}")

# %% [markdown]
# ## Training curves

# %%
show(curves_figure(scalars, title=f"run {Path(RUN).name}"))

# %% [markdown]
# ## Held-out images in embedding space
# Test-split images (never seen in pretraining), features of the exported backbone, projected to 2-D
# (UMAP when `umap-learn` is installed, else PCA), coloured by the dominant Dynamic World class.

# %%
emb = embed_split(RUN, split="test", max_items=256)
print(f"{len(emb.ids)} test images of {emb.store}, {emb.features.shape[1]}-d features from {emb.checkpoint}")
show(embedding_figure(emb, method="umap"))

# %% [markdown]
# ## Label similarity vs embedding similarity
# SoftCon makes the similarity of two embeddings follow the similarity of their label vectors.

# %%
pairs = similarity_pairs(emb)
print(f"{pairs['n_pairs']} pairs, Spearman rank correlation {pairs['spearman']:.3f}")
show(similarity_figure(emb))

# %% [markdown]
# ## Nearest neighbours of a few queries

# %%
queries = list(np.linspace(0, len(emb.ids) - 1, min(3, len(emb.ids))).round().astype(int))
for q, nn in zip(queries, nearest_neighbours(emb, queries, k=4)):
    print(emb.ids[q], "→", [emb.ids[i] for i in nn if i >= 0])
show(neighbours_figure(emb, queries))
