"""Quick start: a convex problem as a differentiable PyTorch layer."""

import cvxpy as cp
import torch

from conelayers.torch import CvxpyLayer

torch.manual_seed(1)
n, m = 2, 3
x = cp.Variable(n)
A = cp.Parameter((m, n))
b = cp.Parameter(m)
problem = cp.Problem(cp.Minimize(cp.pnorm(A @ x - b, p=1)), [x >= 0])
assert problem.is_dpp()

layer = CvxpyLayer(problem, parameters=[A, b], variables=[x])
A_t = torch.randn(m, n, dtype=torch.float64, requires_grad=True)
b_t = torch.randn(m, dtype=torch.float64, requires_grad=True)

(solution,) = layer(A_t, b_t)  # solves the problem at (A_t, b_t)
solution.sum().backward()  # gradients of sum(x*) with respect to A and b

print("x* =", solution.detach().numpy())
print("d sum(x*) / dA =\n", A_t.grad.numpy())
print("d sum(x*) / db =", b_t.grad.numpy())
