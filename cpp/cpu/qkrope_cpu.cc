#include "cpu/qkrope_cpu.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "core/host_numeric.h"
#include "core/rope_math.h"

namespace qkrope::cpu {
namespace {

int64_t load_position(const Problem& p, int64_t token) {
  return p.positions_64 ? static_cast<const int64_t*>(p.positions)[token]
                        : static_cast<const int32_t*>(p.positions)[token];
}

// cos/sin of every rotary pair of one token.
void token_angles(const Problem& p, int64_t token, std::vector<float>& cos_v, std::vector<float>& sin_v) {
  const int32_t half = p.rotary_dim / 2;
  const int64_t position = load_position(p, token);
  if (p.table.is_cache) {
    const int64_t row = clamp_row(position, p.table.rows) * p.rotary_dim;
    for (int32_t i = 0; i < half; ++i) {
      cos_v[i] = load_float(p.table.data, p.table.dtype, row + i);
      sin_v[i] = load_float(p.table.data, p.table.dtype, row + half + i);
    }
  } else {
    const float pos_f = static_cast<float>(position);
    for (int32_t i = 0; i < half; ++i) {
      const float angle = pos_f * static_cast<const float*>(p.table.data)[i];
      cos_v[i] = std::cos(angle);
      sin_v[i] = std::sin(angle);
    }
  }
}

// Per-element scale: weight_offset + w, or 1 without a weight.
void head_scale(const Problem& p, int group, std::vector<float>& scale) {
  for (int32_t e = 0; e < p.head_dim; ++e) {
    scale[e] = p.weight[group] ? p.weight_offset + load_float(p.weight[group], p.weight_dtype[group], e) : 1.0f;
  }
}

int64_t head_offset(const HeadGroup& g, int64_t token, int32_t head, int32_t head_dim) {
  return token * g.token_stride + static_cast<int64_t>(head) * head_dim;
}

float inverse_rms(const std::vector<float>& x, float eps) {
  float sum = 0.0f;
  for (float v : x) sum += v * v;
  return 1.0f / std::sqrt(sum / static_cast<float>(x.size()) + eps);
}

}  // namespace

void forward(const Problem& p) {
  const int32_t dim = p.head_dim;
  const int32_t half = p.rotary_dim / 2;
  std::vector<float> cos_v(half), sin_v(half), x(dim), n(dim);
  std::vector<float> scale[2] = {std::vector<float>(dim), std::vector<float>(dim)};
  head_scale(p, 0, scale[0]);
  head_scale(p, 1, scale[1]);
  const int64_t elem = elem_bytes(p.dtype);

  for (int64_t t = 0; t < p.num_tokens; ++t) {
    token_angles(p, t, cos_v, sin_v);
    for (int g = 0; g < 3; ++g) {
      const HeadGroup& grp = p.group[g];
      for (int32_t h = 0; h < grp.num_heads; ++h) {
        const int64_t off = head_offset(grp, t, h, dim);
        if (g == 2) {  // V of an unaliased packed qkv: copied as is
          std::memcpy(static_cast<char*>(grp.out) + off * elem, static_cast<const char*>(grp.in) + off * elem,
                      dim * elem);
          continue;
        }
        for (int32_t e = 0; e < dim; ++e) x[e] = load_float(grp.in, p.dtype, off + e);
        const float r = inverse_rms(x, p.eps);
        for (int32_t e = 0; e < dim; ++e) n[e] = x[e] * r * scale[g][e];
        for (int32_t i = 0; i < half; ++i) {
          const int32_t a = pair_first(p.style, i, p.rotary_dim), b = pair_second(p.style, i, p.rotary_dim);
          const float na = n[a], nb = n[b];
          n[a] = na * cos_v[i] - nb * sin_v[i];
          n[b] = nb * cos_v[i] + na * sin_v[i];
        }
        for (int32_t e = 0; e < dim; ++e) store_float(grp.out, p.dtype, off + e, n[e]);
      }
    }
  }
}

void backward(const Problem& p, const BackwardOutputs& out) {
  const int32_t dim = p.head_dim;
  const int32_t half = p.rotary_dim / 2;
  std::vector<float> cos_v(half), sin_v(half), x(dim), g(dim);
  std::vector<float> scale[2] = {std::vector<float>(dim), std::vector<float>(dim)};
  const int64_t examples = out.num_examples;
  const int64_t tokens_per_example = p.num_tokens / examples;
  std::vector<float> dw(static_cast<size_t>(examples * 2 * dim), 0.0f);  // [examples][2][dim]
  head_scale(p, 0, scale[0]);
  head_scale(p, 1, scale[1]);

  for (int64_t t = 0; t < p.num_tokens; ++t) {
    float* dw_token = dw.data() + (t / tokens_per_example) * 2 * dim;
    token_angles(p, t, cos_v, sin_v);
    for (int gi = 0; gi < 2; ++gi) {
      const HeadGroup& grp = p.group[gi];
      for (int32_t h = 0; h < grp.num_heads; ++h) {
        const int64_t off = head_offset(grp, t, h, dim);
        for (int32_t e = 0; e < dim; ++e) {
          x[e] = load_float(grp.in, p.dtype, off + e);
          g[e] = load_float(grp.grad, p.dtype, off + e);
        }
        // Undo the rotation on the cotangent: the transpose of a rotation is the inverse rotation.
        for (int32_t i = 0; i < half; ++i) {
          const int32_t a = pair_first(p.style, i, p.rotary_dim), b = pair_second(p.style, i, p.rotary_dim);
          const float ga = g[a], gb = g[b];
          g[a] = ga * cos_v[i] + gb * sin_v[i];
          g[b] = gb * cos_v[i] - ga * sin_v[i];
        }
        // RMSNorm backward with xhat = x * r and u = g * scale: dx = r * (u - xhat * mean(u * xhat)).
        const float r = inverse_rms(x, p.eps);
        float dot = 0.0f;
        for (int32_t e = 0; e < dim; ++e) dot += g[e] * scale[gi][e] * x[e] * r;
        const float mean_dot = dot / static_cast<float>(dim);
        for (int32_t e = 0; e < dim; ++e) {
          const float xhat = x[e] * r;
          dw_token[gi * dim + e] += g[e] * xhat;
          store_float(grp.out, p.dtype, off + e, r * (g[e] * scale[gi][e] - xhat * mean_dot));
        }
      }
    }
  }
  // One partial row per example holds the sum; the other rows of the example are zero.
  for (int64_t ex = 0; ex < examples; ++ex) {
    for (int64_t b = 0; b < out.blocks_per_example; ++b) {
      for (int32_t i = 0; i < 2 * dim; ++i) {
        out.partials[(ex * out.blocks_per_example + b) * 2 * dim + i] = b == 0 ? dw[ex * 2 * dim + i] : 0.0f;
      }
    }
    for (int gi = 0; gi < 2; ++gi) {
      if (out.dweight[gi] == nullptr) continue;
      for (int32_t e = 0; e < dim; ++e) out.dweight[gi][ex * dim + e] = dw[(ex * 2 + gi) * dim + e];
    }
  }
}

}  // namespace qkrope::cpu
