// Shared by the C++ autograd nodes of mmnorm's library ops
// (moment_norm.cpp, sparsestmax.cpp).
#pragma once

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>

#include <string>
#include <utility>

namespace mmnorm {

// A node's backward that is differentiable once (as @once_differentiable
// in Python): `first_order()` computes the gradients without grad; with
// create_graph=True they come back attached to a node that raises
// `message` if they are differentiated again, instead of silently acting
// as constants. Undefined gradients stay undefined.
template <typename FirstOrder>
torch::autograd::variable_list once_differentiable(const std::string& message,
                                                   FirstOrder&& first_order) {
  const bool create_graph = at::GradMode::is_enabled();
  torch::autograd::variable_list out;
  {
    at::NoGradGuard no_grad;
    out = std::forward<FirstOrder>(first_order)();
  }
  if (!create_graph) {
    return out;
  }
  for (at::Tensor& grad : out) {
    if (grad.defined()) {
      grad = grad.detach();
      grad.set_requires_grad(true);
    }
  }
  return torch::autograd::DelayedError(message,
                                       static_cast<int64_t>(out.size()))(
      std::move(out));
}

}  // namespace mmnorm
