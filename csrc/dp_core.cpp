// The search's inner loop: for one pipeline stage, the cheapest assignment of one strategy to
// every layer such that the layers' memory fits a budget.
//
// State (layer l, memory used <= m, strategy s of layer l):
//   f[0][m][s] = intra[0][s]                                   if mem[0][s] <= m
//   f[l][m][s] = intra[l][s] + min_s' f[l-1][m - mem[l][s]][s'] + trans[s'][s]
// Transition costs depend only on the activation layouts of the two strategies, so the caller
// passes a layout id per strategy (group[s]) and a layout-by-layout matrix (group_trans). The
// min over s' first reduces each layout to its best strategy, then pays G x G transitions:
// O(L * M * (S + G^2)), which is O(L * M * S^2) when every strategy has its own layout (the
// general case: group = 0..S-1, group_trans = any S x S matrix).
//
// Ties break towards the lower index everywhere so that the numpy reference
// (search/dp_reference.py) returns the same strategies.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace py = pybind11;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;
using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

struct Problem {
    int64_t L = 0, S = 0, G = 0;
    const double* intra = nullptr;   // L x S
    const int64_t* mem = nullptr;    // L x S, memory units, >= 0
    const int32_t* group = nullptr;  // S, layout id in [0, G)
    const double* gtrans = nullptr;  // G x G
    std::vector<double> finals;      // F x S, paid after the last layer (e.g. re-layout into the LM head)
    int64_t F = 1;
    // group_trans = d on the diagonal and c elsewhere (one price for any layout change): the
    // min over layouts then needs the two best layouts only, O(G) instead of O(G^2)
    bool uniform = false;
    double diag = 0.0, off = 0.0;
};

struct Answer {
    double cost = kInf;
    std::vector<int64_t> strategies;
    int64_t mem_left = -1;
};

Problem make_problem(const F64& intra, const I64& mem, const I32& group, const F64& group_trans,
                     const py::object& final_cost, bool allow_many_finals = false) {
    if (intra.ndim() != 2 || mem.ndim() != 2)
        throw std::invalid_argument("intra and mem must be 2-D arrays of shape (layers, strategies)");
    Problem p;
    p.L = intra.shape(0);
    p.S = intra.shape(1);
    if (mem.shape(0) != p.L || mem.shape(1) != p.S)
        throw std::invalid_argument("mem must have the same shape as intra");
    if (p.L < 1 || p.S < 1) throw std::invalid_argument("need at least one layer and one strategy");
    if (group.ndim() != 1 || group.shape(0) != p.S)
        throw std::invalid_argument("group must be a 1-D array with one layout id per strategy");
    if (group_trans.ndim() != 2 || group_trans.shape(0) != group_trans.shape(1))
        throw std::invalid_argument("group_trans must be a square 2-D array");
    p.G = group_trans.shape(0);
    if (p.S > 32767) throw std::invalid_argument("at most 32767 strategies");
    p.intra = intra.data();
    p.mem = mem.data();
    p.group = group.data();
    p.gtrans = group_trans.data();
    for (int64_t s = 0; s < p.S; ++s)
        if (p.group[s] < 0 || p.group[s] >= p.G)
            throw std::invalid_argument("group ids must lie in [0, group_trans.shape[0])");
    for (int64_t i = 0; i < p.L * p.S; ++i)
        if (p.mem[i] < 0) throw std::invalid_argument("mem must be non-negative");
    p.finals.assign(p.S, 0.0);
    if (!final_cost.is_none()) {
        F64 fc = final_cost.cast<F64>();
        if (!((fc.ndim() == 1 && fc.shape(0) == p.S) || (allow_many_finals && fc.ndim() == 2 && fc.shape(1) == p.S)))
            throw std::invalid_argument(allow_many_finals
                ? "final must have shape (strategies,) or (F, strategies)"
                : "final must be a 1-D array with one cost per strategy");
        p.F = fc.ndim() == 1 ? 1 : fc.shape(0);
        p.finals.assign(fc.data(), fc.data() + p.F * p.S);
    }
    p.diag = p.gtrans[0];
    p.off = p.G > 1 ? p.gtrans[1] : 0.0;
    p.uniform = true;
    for (int64_t a = 0; a < p.G && p.uniform; ++a)
        for (int64_t b = 0; b < p.G; ++b)
            if (p.gtrans[a * p.G + b] != (a == b ? p.diag : p.off)) { p.uniform = false; break; }
    return p;
}

// The recurrence over all layers with memory axis 0..M. After each layer l, `on_layer(l, f)`
// sees f[l][m][s] (row-major (M+1) x S). With `choice`, records for backtracking, per layer l,
// memory m and layout g, the strategy of layer l-1 that feeds it.
template <class OnLayer>
void forward(const Problem& p, int64_t M, std::vector<int16_t>* choice, OnLayer on_layer) {
    const int64_t L = p.L, S = p.S, G = p.G, W = M + 1;
    if (choice) choice->assign(static_cast<size_t>(L) * W * G, -1);
    std::vector<double> prev(static_cast<size_t>(W) * S), cur(static_cast<size_t>(W) * S);
    std::vector<double> h(static_cast<size_t>(W) * G), gmin(G);
    std::vector<int32_t> garg(G), pick(G);
    for (int64_t m = 0; m < W; ++m)
        for (int64_t s = 0; s < S; ++s)
            prev[m * S + s] = (p.mem[s] <= m) ? p.intra[s] : kInf;
    on_layer(0, prev);
    for (int64_t l = 1; l < L; ++l) {
        int16_t* ch = choice ? &(*choice)[static_cast<size_t>(l) * W * G] : nullptr;
        for (int64_t m = 0; m < W; ++m) {
            const double* pm = &prev[m * S];
            for (int64_t g = 0; g < G; ++g) { gmin[g] = kInf; garg[g] = -1; }
            for (int64_t s = 0; s < S; ++s) {
                const int32_t g = p.group[s];
                if (pm[s] < gmin[g]) { gmin[g] = pm[s]; garg[g] = static_cast<int32_t>(s); }
            }
            double* hm = &h[m * G];
            int16_t* cm = ch ? &ch[m * G] : nullptr;
            if (p.uniform) {
                // first-occurrence best and runner-up layouts, so ties resolve as in the general loop
                double m1 = kInf, m2 = kInf;
                int64_t a1 = -1, a2 = -1;
                for (int64_t g = 0; g < G; ++g) {
                    if (garg[g] < 0) continue;
                    if (gmin[g] < m1) { m2 = m1; a2 = a1; m1 = gmin[g]; a1 = g; }
                    else if (gmin[g] < m2) { m2 = gmin[g]; a2 = g; }
                }
                for (int64_t g = 0; g < G; ++g) {
                    const double own = garg[g] >= 0 ? gmin[g] + p.diag : kInf;
                    const int64_t oi = (a1 != g) ? a1 : a2;
                    const double other = oi >= 0 ? ((a1 != g) ? m1 : m2) + p.off : kInf;
                    int64_t pick = -1;
                    double v = kInf;
                    if (own < other || (own == other && own < kInf && g < oi)) { v = own; pick = g; }
                    else if (other < kInf) { v = other; pick = oi; }
                    hm[g] = v;
                    if (cm) cm[g] = pick >= 0 ? static_cast<int16_t>(garg[pick]) : int16_t(-1);
                }
                continue;
            }
            for (int64_t g = 0; g < G; ++g) { hm[g] = kInf; pick[g] = -1; }
            for (int64_t gp = 0; gp < G; ++gp) {
                if (garg[gp] < 0) continue;
                const double base = gmin[gp];
                const double* tr = &p.gtrans[gp * G];
                for (int64_t g = 0; g < G; ++g) {  // branch-free, so that it vectorises
                    const double v = base + tr[g];
                    const bool better = v < hm[g];
                    hm[g] = better ? v : hm[g];
                    pick[g] = better ? static_cast<int32_t>(gp) : pick[g];
                }
            }
            if (cm)
                for (int64_t g = 0; g < G; ++g) cm[g] = pick[g] >= 0 ? static_cast<int16_t>(garg[pick[g]]) : int16_t(-1);
        }
        const double* in = &p.intra[l * S];
        const int64_t* mm = &p.mem[l * S];
        for (int64_t m = 0; m < W; ++m) {
            double* cr = &cur[m * S];
            for (int64_t s = 0; s < S; ++s) {
                const int64_t rest = m - mm[s];
                cr[s] = rest >= 0 ? in[s] + h[rest * G + p.group[s]] : kInf;
            }
        }
        std::swap(prev, cur);
        on_layer(l, prev);
    }
}

Answer solve_impl(const Problem& p, int64_t budget) {
    Answer a;
    std::vector<int16_t> choice;
    std::vector<double> last;
    forward(p, budget, &choice, [&](int64_t l, const std::vector<double>& f) {
        if (l == p.L - 1) last.assign(f.begin() + budget * p.S, f.begin() + (budget + 1) * p.S);
    });
    int64_t best = -1;
    for (int64_t s = 0; s < p.S; ++s) {
        const double v = last[s] + p.finals[s];
        if (last[s] < kInf && v < a.cost) { a.cost = v; best = s; }
    }
    if (best < 0) return a;
    const int64_t W = budget + 1, G = p.G;
    a.strategies.assign(p.L, 0);
    int64_t m = budget, s = best, used = 0;
    for (int64_t l = p.L - 1; l >= 0; --l) {
        a.strategies[l] = s;
        used += p.mem[l * p.S + s];
        if (l == 0) break;
        const int64_t rest = m - p.mem[l * p.S + s];
        s = choice[(static_cast<size_t>(l) * W + rest) * G + p.group[s]];
        m = rest;
    }
    a.mem_left = budget - used;
    return a;
}

py::tuple solve(const F64& intra, const I64& mem, const I32& group, const F64& group_trans, int64_t budget,
                const py::object& final_cost) {
    Problem p = make_problem(intra, mem, group, group_trans, final_cost);
    Answer a;
    if (budget >= 0) {
        py::gil_scoped_release release;
        a = solve_impl(p, budget);
    }
    return py::make_tuple(a.cost, a.strategies, a.mem_left);
}

py::object cost_table(const F64& intra, const I64& mem, const I32& group, const F64& group_trans,
                      int64_t budget, const py::object& final_cost, bool keep_choices) {
    Problem p = make_problem(intra, mem, group, group_trans, final_cost, true);
    if (budget < 0) throw std::invalid_argument("budget must be >= 0");
    const int64_t W = budget + 1, S = p.S, L = p.L, F = p.F;
    const bool many = !final_cost.is_none() && final_cost.cast<F64>().ndim() == 2;
    py::array_t<double> out = many ? py::array_t<double>({F, L, W}) : py::array_t<double>({L, W});
    double* o = out.mutable_data();
    // finals that are constant within each layout (re-layout into the head) reduce to the best
    // strategy per layout: G work per memory value instead of S
    std::vector<int64_t> first_of(p.G, -1);
    for (int64_t s = 0; s < S; ++s)
        if (first_of[p.group[s]] < 0) first_of[p.group[s]] = s;
    bool by_group = true;
    for (int64_t k = 0; k < F && by_group; ++k)
        for (int64_t s = 0; s < S; ++s)
            if (p.finals[k * S + s] != p.finals[k * S + first_of[p.group[s]]]) { by_group = false; break; }
    std::vector<int16_t> choice;
    {
        py::gil_scoped_release release;
        std::vector<double> gmin(p.G);
        forward(p, budget, keep_choices ? &choice : nullptr, [&](int64_t l, const std::vector<double>& f) {
            for (int64_t m = 0; m < W; ++m) {
                const double* fm = &f[m * S];
                if (by_group) {
                    std::fill(gmin.begin(), gmin.end(), kInf);
                    for (int64_t s = 0; s < S; ++s) gmin[p.group[s]] = std::min(gmin[p.group[s]], fm[s]);
                }
                for (int64_t k = 0; k < F; ++k) {
                    const double* fin = &p.finals[k * S];
                    double best = kInf;
                    if (by_group) {
                        for (int64_t g = 0; g < p.G; ++g)
                            if (gmin[g] < kInf && first_of[g] >= 0) best = std::min(best, gmin[g] + fin[first_of[g]]);
                    } else {
                        for (int64_t s = 0; s < S; ++s)
                            if (fm[s] < kInf) best = std::min(best, fm[s] + fin[s]);
                    }
                    o[(k * L + l) * W + m] = best;
                }
            }
        });
    }
    if (!keep_choices) return out;
    py::array_t<int16_t> kept({L, W, p.G});
    std::copy(choice.begin(), choice.end(), kept.mutable_data());
    return py::make_tuple(out, kept);
}

// solve() for the first n layers within `budget`, read from the choices a cost_table pass kept
// (the forward pass at memory m and layer l does not depend on the memory axis's length nor on
// later layers, so its choices are those solve() would record): each strategy's cost at layer
// n - 1 is rebuilt along its chain of choices, summed in the forward pass's order.
py::tuple backtrack(const py::array_t<int16_t, py::array::c_style | py::array::forcecast>& choices, const F64& intra,
                    const I64& mem, const I32& group, const F64& group_trans, int64_t n, int64_t budget,
                    const py::object& final_cost) {
    Problem p = make_problem(intra, mem, group, group_trans, final_cost);
    if (choices.ndim() != 3 || choices.shape(0) != p.L || choices.shape(2) != p.G)
        throw std::invalid_argument("choices must have shape (layers, memory + 1, layouts) of the same problem");
    const int64_t W = choices.shape(1), S = p.S, G = p.G;
    if (n < 1 || n > p.L) throw std::invalid_argument("n must lie in [1, layers]");
    Answer a;
    if (budget < 0) return py::make_tuple(a.cost, a.strategies, a.mem_left);
    if (budget >= W) throw std::invalid_argument("budget must be below the memory axis the choices were kept for");
    const int16_t* ch = choices.data();
    std::vector<int64_t> path(n), best_path;
    {
        py::gil_scoped_release release;
        for (int64_t s0 = 0; s0 < S; ++s0) {
            int64_t m = budget, s = s0;
            bool ok = true;
            for (int64_t l = n - 1; l >= 1 && ok; --l) {
                path[l] = s;
                const int64_t rest = m - p.mem[l * S + s];
                if (rest < 0) { ok = false; break; }
                const int16_t prev = ch[(static_cast<size_t>(l) * W + rest) * G + p.group[s]];
                if (prev < 0) { ok = false; break; }
                s = prev;
                m = rest;
            }
            if (!ok || p.mem[s] > m) continue;
            path[0] = s;
            double f = p.intra[path[0]];
            for (int64_t l = 1; l < n; ++l)
                f = p.intra[l * S + path[l]] + (f + p.gtrans[p.group[path[l - 1]] * G + p.group[path[l]]]);
            const double v = f + p.finals[s0];
            if (f < kInf && v < a.cost) { a.cost = v; best_path = path; }
        }
        if (!best_path.empty()) {
            int64_t used = 0;
            for (int64_t l = 0; l < n; ++l) used += p.mem[l * S + best_path[l]];
            a.strategies = best_path;
            a.mem_left = budget - used;
        }
    }
    return py::make_tuple(a.cost, a.strategies, a.mem_left);
}

}  // namespace

PYBIND11_MODULE(_dp_core, m) {
    m.doc() = "Layer x memory x strategy dynamic program of the plan search (one pipeline stage).";
    m.def("solve", &solve, py::arg("intra"), py::arg("mem"), py::arg("group"), py::arg("group_trans"),
          py::arg("budget"), py::arg("final") = py::none(),
          "Cheapest strategy per layer with total memory <= budget.\n\n"
          "intra[l, s]: cost of layer l under strategy s; mem[l, s]: its memory (integer units);\n"
          "group[s]: layout id of s; group_trans[g', g]: cost of going from layout g' to g between\n"
          "adjacent layers; final[s]: cost paid after the last layer. Returns (cost, strategies,\n"
          "mem_left); (inf, [], -1) when nothing fits.");
    m.def("cost_table", &cost_table, py::arg("intra"), py::arg("mem"), py::arg("group"),
          py::arg("group_trans"), py::arg("budget"), py::arg("final") = py::none(), py::arg("keep_choices") = false,
          "table[n-1, m]: the cost solve() returns for the first n layers within memory m, for\n"
          "every n and every m <= budget, from one pass (inf where nothing fits). A 2-D final\n"
          "(F, strategies) gives one such table per row: shape (F, layers, budget + 1). With\n"
          "keep_choices, (table, choices) where choices feed backtrack().");
    m.def("backtrack", &backtrack, py::arg("choices"), py::arg("intra"), py::arg("mem"), py::arg("group"),
          py::arg("group_trans"), py::arg("n"), py::arg("budget"), py::arg("final") = py::none(),
          "What solve(intra[:n], mem[:n], group, group_trans, budget, final) returns, from the choices of\n"
          "cost_table(intra, mem, group, group_trans, B, keep_choices=True) with budget <= B, in\n"
          "O(strategies x n) instead of another pass over every layer and memory value.");
}
