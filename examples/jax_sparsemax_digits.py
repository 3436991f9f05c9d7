"""A sparsemax output layer, learned end to end through a conelayers JAX layer.

Sparsemax (Martins & Astudillo, 2016) maps class scores s ∈ R^K to the Euclidean
projection onto the probability simplex,

    p(s) = argmin_z ‖z − s‖²  s.t.  z ≥ 0,  Σz = 1,

which, unlike softmax, gives exact zeros: a prediction names a few candidate classes and
rules the others out. Here the projection is a ``conelayers.jax.CvxpyLayer`` (a QP with a
nonnegative cone and one equality, solved by SCS and refined by Newton steps), and its
gradient is the layer's implicit derivative; nothing about sparsemax is coded by hand.

Data: scikit-learn's bundled handwritten digits (1797 8×8 images, 10 classes, no
download), split 75/25 (stratified, seed 0); pixels standardized with the training
statistics. Model: scores s = W x + b (64 → 10), probabilities p = sparsemax(s), loss the
mean squared error ‖p − onehot(y)‖² (the Brier score) plus a small weight decay. Training:
plain minibatch gradient steps (no optimizer library), with the loss and its gradient
under ``jax.jit`` and the layer under ``jax.vmap`` over the minibatch (one batched solve
per step). It prints the train/test accuracy and the sparsity of the test outputs, and
writes ``jax_sparsemax_digits.png`` (loss and test-accuracy curves, the distribution of
support sizes, and a few test digits with their sparse output distributions).

Run: python examples/jax_sparsemax_digits.py [--steps N] [--batch N] [--out FILE.png]
(the defaults take about a minute on two idle cores).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from conelayers.jax import CvxpyLayer

K = 10  # classes
# An output entry above this counts as "in the support"; the layer's zeros are zero to
# roundoff (|p| ~ 1e-15 after its Newton refinement), not bit-exact.
SUPPORT_TOL = 1e-8


def sparsemax_layer(k: int = K) -> CvxpyLayer:
    """The projection onto the simplex in R^k as a JAX layer: scores → probabilities."""
    s = cp.Parameter(k, name="scores")
    z = cp.Variable(k, name="p")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(z - s)), [z >= 0, cp.sum(z) == 1])
    return CvxpyLayer(problem, parameters=[s], variables=[z])


def digits_split(seed: int = 0):
    """(X_train, X_test, y_train, y_test, images_test): standardized pixels (training
    statistics; constant pixels left at 0) and the raw test images for plotting."""
    digits = load_digits()
    X, y = digits.data.astype(float), digits.target
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=0.25, stratify=y, random_state=seed
    )
    mean = X[idx_train].mean(axis=0)
    std = X[idx_train].std(axis=0)
    std[std == 0] = 1.0
    Xs = (X - mean) / std
    return (Xs[idx_train], Xs[idx_test], y[idx_train], y[idx_test],
            digits.images[idx_test])


@dataclass
class SparsemaxRun:
    steps: list[int]  # step index of each recorded loss
    losses: list[float]  # minibatch loss (Brier + weight decay) before each step
    eval_steps: list[int]
    eval_test_accuracy: list[float]
    train_accuracy: float
    test_accuracy: float
    test_scores: np.ndarray  # (n_test, K)
    test_probs: np.ndarray  # (n_test, K), sparsemax outputs of the layer
    y_test: np.ndarray
    images_test: np.ndarray
    seconds: float

    @property
    def support_sizes(self) -> np.ndarray:
        return (self.test_probs > SUPPORT_TOL).sum(axis=1)

    @property
    def mean_support(self) -> float:
        return float(self.support_sizes.mean())

    @property
    def one_hot_fraction(self) -> float:
        return float((self.support_sizes == 1).mean())


def run(steps: int = 80, batch_size: int = 128, lr: float = 1.0, weight_decay: float = 1e-4,
        eval_every: int = 20, seed: int = 0, verbose: bool = True) -> SparsemaxRun:
    """Train the linear-sparsemax classifier; returns its curves and test outputs."""
    start = time.perf_counter()
    X_train, X_test, y_train, y_test, images_test = digits_split(seed)
    layer = sparsemax_layer(K)
    with jax.enable_x64(True):
        Xtr, Xte = jnp.asarray(X_train), jnp.asarray(X_test)
        Ytr = jax.nn.one_hot(y_train, K, dtype=jnp.float64)

        def probs(params, X):
            W, b = params
            scores = X @ W.T + b
            return jax.vmap(lambda s: layer(s)[0])(scores), scores

        def loss_fn(params, X, Y):
            p, _ = probs(params, X)
            brier = jnp.mean(jnp.sum((p - Y) ** 2, axis=1))
            return brier + weight_decay * jnp.sum(params[0] ** 2)

        value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
        predict = jax.jit(probs)

        def accuracy(params, X, y):
            p, _ = predict(params, X)
            return float(np.mean(np.argmax(np.asarray(p), axis=1) == y))

        params = (jnp.zeros((K, X_train.shape[1])), jnp.zeros(K))
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(y_train))
        cursor = 0
        record = {"steps": [], "losses": [], "eval_steps": [0],
                  "eval_test_accuracy": [accuracy(params, Xte, y_test)]}
        for step in range(steps):
            if cursor + batch_size > len(order):
                order, cursor = rng.permutation(len(y_train)), 0
            idx = order[cursor:cursor + batch_size]
            cursor += batch_size
            loss, grads = value_and_grad(params, Xtr[idx], Ytr[idx])
            params = tuple(p - lr * g for p, g in zip(params, grads))
            record["steps"].append(step)
            record["losses"].append(float(loss))
            if (step + 1) % eval_every == 0 or step == steps - 1:
                record["eval_steps"].append(step + 1)
                record["eval_test_accuracy"].append(accuracy(params, Xte, y_test))
                if verbose:
                    print(f"step {step + 1:4d}  minibatch loss {float(loss):.4f}  "
                          f"test accuracy {record['eval_test_accuracy'][-1]:.3f}")
        train_accuracy = accuracy(params, Xtr, y_train)
        test_probs, test_scores = (np.asarray(a) for a in predict(params, Xte))
    return SparsemaxRun(
        **record,
        train_accuracy=train_accuracy,
        test_accuracy=float(np.mean(np.argmax(test_probs, axis=1) == y_test)),
        test_scores=test_scores,
        test_probs=test_probs,
        y_test=y_test,
        images_test=images_test,
        seconds=time.perf_counter() - start,
    )


def summary(result: SparsemaxRun) -> str:
    sizes = np.bincount(result.support_sizes, minlength=K + 1)[1:]
    return "\n".join([
        f"train accuracy {result.train_accuracy:.3f}, test accuracy {result.test_accuracy:.3f}",
        f"test outputs: mean support size {result.mean_support:.2f} of {K} classes, "
        f"{100 * result.one_hot_fraction:.1f}% one-hot, "
        f"{100 * np.mean(result.test_probs <= SUPPORT_TOL):.1f}% of all entries zero "
        f"(|p| <= {SUPPORT_TOL:g})",
        "support sizes 1..10: " + " ".join(str(int(c)) for c in sizes),
        f"loss {result.losses[0]:.4f} (step 1) -> {result.losses[-1]:.4f} "
        f"(step {len(result.losses)}); {result.seconds:.1f} s",
    ])


def plot(result: SparsemaxRun, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 7.5), constrained_layout=True)
    grid = fig.add_gridspec(3, 6, height_ratios=[1.3, 0.8, 0.8])
    ax = fig.add_subplot(grid[0, :3])
    ax.plot(np.asarray(result.steps) + 1, result.losses, color="0.6", lw=0.8,
            label="minibatch loss")
    window = len(result.losses) // 12
    if window > 1:
        smooth = np.convolve(result.losses, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window, smooth, color="C0", lw=2,
                label=f"moving average ({window} steps)")
    ax.set_xlabel("gradient step")
    ax.set_ylabel("‖p − onehot(y)‖² + decay")
    ax2 = ax.twinx()
    ax2.plot(result.eval_steps, result.eval_test_accuracy, "o-", color="C3",
             label="test accuracy")
    ax2.set_ylabel("test accuracy", color="C3")
    ax2.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right")
    ax.set_title("training through the sparsemax layer")

    ax = fig.add_subplot(grid[0, 3:])
    counts = np.bincount(result.support_sizes, minlength=K + 1)[1:]
    ax.bar(np.arange(1, K + 1), counts, color="C2")
    ax.set_xticks(np.arange(1, K + 1))
    ax.set_xlabel("support size (classes with p > 0)")
    ax.set_ylabel("test images")
    ax.set_title(f"sparsity: mean support {result.mean_support:.2f}, "
                 f"{100 * result.one_hot_fraction:.0f}% one-hot")

    # A few test digits: the most uncertain ones (largest support) and some confident.
    order = np.argsort(-result.support_sizes, kind="stable")
    picks = list(order[:4]) + list(order[-2:])
    for j, i in enumerate(picks):
        ax = fig.add_subplot(grid[1, j])
        ax.imshow(result.images_test[i], cmap="gray_r")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"label {result.y_test[i]}", fontsize=9)
        ax = fig.add_subplot(grid[2, j])
        p = result.test_probs[i]
        ax.bar(np.arange(K), p, color=["C3" if c == result.y_test[i] else "C0" for c in range(K)])
        ax.set_ylim(0, 1)
        ax.set_xticks(np.arange(K))
        ax.tick_params(labelsize=7)
        ax.set_title(f"{int((p > SUPPORT_TOL).sum())} nonzero", fontsize=9)
    fig.suptitle(f"Linear model + sparsemax layer on scikit-learn digits: "
                 f"test accuracy {result.test_accuracy:.3f}")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> SparsemaxRun:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--out", default="jax_sparsemax_digits.png")
    args = parser.parse_args(argv)
    result = run(steps=args.steps, batch_size=args.batch, lr=args.lr)
    print(summary(result))
    plot(result, args.out)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
