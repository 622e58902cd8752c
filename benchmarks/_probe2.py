import sys, collections
sys.path.insert(0, "benchmarks")
import dlsim
from bench_side_by_side import gpt3
import dlsim.network.fluid as f
stats = collections.Counter()
orig = f.Network.transfer
def tr(self, src, dst, size, *a, instances=1, **kw):
    stats[(len(src), instances)] += 1
    return orig(self, src, dst, size, *a, instances=instances, **kw)
f.Network.transfer = tr
olay = f.Network._layout
fails = collections.Counter()
def lay(self, src, dst, keep, rounds, lr, ls, size, instances):
    r = olay(self, src, dst, keep, rounds, lr, ls, size, instances)
    if instances > 1 and r[0].k == 1:
        fails[(len(src), instances)] += 1
    return r
f.Network._layout = lay
sc = gpt3(int(sys.argv[1]), False)
sc["training"]["global_batch"] = 32 * (int(sys.argv[1]) // 128)
r = dlsim.simulate(sc)
print(stats); print("fails", fails)
