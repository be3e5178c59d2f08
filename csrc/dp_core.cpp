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
    std::vector<double> final_cost; // S, paid after the last layer (e.g. re-layout into the LM head)
};

struct Answer {
    double cost = kInf;
    std::vector<int64_t> strategies;
    int64_t mem_left = -1;
};

Problem make_problem(const F64& intra, const I64& mem, const I32& group, const F64& group_trans,
                     const py::object& final_cost) {
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
    p.final_cost.assign(p.S, 0.0);
    if (!final_cost.is_none()) {
        F64 fc = final_cost.cast<F64>();
        if (fc.ndim() != 1 || fc.shape(0) != p.S)
            throw std::invalid_argument("final must be a 1-D array with one cost per strategy");
        for (int64_t s = 0; s < p.S; ++s) p.final_cost[s] = fc.data()[s];
    }
    return p;
}

// Runs the recurrence over all L layers with memory axis 0..M (M = max budget) and answers,
// for every n in `lengths`, the best assignment of the first n layers within budgets[n-1].
std::vector<Answer> run_dp(const Problem& p, const std::vector<int64_t>& budgets,
                           const std::vector<int64_t>& lengths) {
    const int64_t L = p.L, S = p.S, G = p.G;
    int64_t M = 0;
    for (int64_t n : lengths) M = std::max(M, budgets[n - 1]);
    const int64_t W = M + 1;

    // choice[l][m][g]: the strategy of layer l-1 that feeds, at memory m, a layer l of layout g.
    std::vector<int16_t> choice(static_cast<size_t>(L) * W * G, -1);
    std::vector<double> prev(static_cast<size_t>(W) * S, kInf), cur(static_cast<size_t>(W) * S, kInf);
    std::vector<double> h(static_cast<size_t>(W) * G), gmin(G);
    std::vector<int32_t> garg(G);
    std::vector<std::vector<double>> last_rows(L);  // f[n-1][budget_n][*] for requested n

    std::vector<char> wanted(L, 0);
    for (int64_t n : lengths) wanted[n - 1] = 1;

    auto keep_row = [&](int64_t l, const std::vector<double>& f) {
        if (!wanted[l]) return;
        const int64_t b = budgets[l];
        last_rows[l].assign(f.begin() + b * S, f.begin() + (b + 1) * S);
    };

    for (int64_t m = 0; m < W; ++m)
        for (int64_t s = 0; s < S; ++s)
            prev[m * S + s] = (p.mem[s] <= m) ? p.intra[s] : kInf;
    keep_row(0, prev);

    for (int64_t l = 1; l < L; ++l) {
        int16_t* ch = &choice[static_cast<size_t>(l) * W * G];
        for (int64_t m = 0; m < W; ++m) {
            const double* pm = &prev[m * S];
            for (int64_t g = 0; g < G; ++g) { gmin[g] = kInf; garg[g] = -1; }
            for (int64_t s = 0; s < S; ++s) {
                const int32_t g = p.group[s];
                if (pm[s] < gmin[g]) { gmin[g] = pm[s]; garg[g] = static_cast<int32_t>(s); }
            }
            double* hm = &h[m * G];
            int16_t* cm = &ch[m * G];
            for (int64_t g = 0; g < G; ++g) { hm[g] = kInf; cm[g] = -1; }
            for (int64_t gp = 0; gp < G; ++gp) {
                if (garg[gp] < 0) continue;
                const double base = gmin[gp];
                const double* tr = &p.gtrans[gp * G];
                for (int64_t g = 0; g < G; ++g) {
                    const double v = base + tr[g];
                    if (v < hm[g]) { hm[g] = v; cm[g] = static_cast<int16_t>(garg[gp]); }
                }
            }
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
        keep_row(l, prev);
    }

    std::vector<Answer> out;
    out.reserve(lengths.size());
    for (int64_t n : lengths) {
        Answer a;
        const std::vector<double>& row = last_rows[n - 1];
        int64_t best = -1;
        for (int64_t s = 0; s < S; ++s) {
            const double v = row[s] + p.final_cost[s];
            if (row[s] < kInf && v < a.cost) { a.cost = v; best = s; }
        }
        if (best >= 0) {
            a.strategies.assign(n, 0);
            int64_t m = budgets[n - 1], s = best, used = 0;
            for (int64_t l = n - 1; l >= 0; --l) {
                a.strategies[l] = s;
                used += p.mem[l * S + s];
                if (l == 0) break;
                const int64_t rest = m - p.mem[l * S + s];
                s = choice[(static_cast<size_t>(l) * W + rest) * G + p.group[s]];
                m = rest;
            }
            a.mem_left = budgets[n - 1] - used;
        }
        out.push_back(std::move(a));
    }
    return out;
}

py::tuple to_tuple(const Answer& a) {
    return py::make_tuple(a.cost, a.strategies, a.mem_left);
}

py::tuple solve(const F64& intra, const I64& mem, const I32& group, const F64& group_trans, int64_t budget,
                const py::object& final_cost) {
    Problem p = make_problem(intra, mem, group, group_trans, final_cost);
    if (budget < 0) return to_tuple(Answer{});
    std::vector<int64_t> budgets(p.L, budget);
    std::vector<Answer> ans;
    {
        py::gil_scoped_release release;
        ans = run_dp(p, budgets, {p.L});
    }
    return to_tuple(ans[0]);
}

py::list solve_lengths(const F64& intra, const I64& mem, const I32& group, const F64& group_trans,
                       const I64& budgets_arr, const py::object& final_cost) {
    Problem p = make_problem(intra, mem, group, group_trans, final_cost);
    if (budgets_arr.ndim() != 1 || budgets_arr.shape(0) != p.L)
        throw std::invalid_argument("budgets must hold one budget per prefix length (shape (layers,))");
    std::vector<int64_t> budgets(budgets_arr.data(), budgets_arr.data() + p.L);
    std::vector<int64_t> lengths;
    for (int64_t n = 1; n <= p.L; ++n)
        if (budgets[n - 1] >= 0) lengths.push_back(n);
    std::vector<Answer> ans;
    if (!lengths.empty()) {
        py::gil_scoped_release release;
        ans = run_dp(p, budgets, lengths);
    }
    py::list out;
    size_t k = 0;
    for (int64_t n = 1; n <= p.L; ++n) {
        if (budgets[n - 1] >= 0) out.append(to_tuple(ans[k++]));
        else out.append(to_tuple(Answer{}));
    }
    return out;
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
    m.def("solve_lengths", &solve_lengths, py::arg("intra"), py::arg("mem"), py::arg("group"),
          py::arg("group_trans"), py::arg("budgets"), py::arg("final") = py::none(),
          "One pass of solve() answering every prefix: element n-1 is the best assignment of the\n"
          "first n layers within budgets[n-1] (a negative budget gives (inf, [], -1)).");
}
