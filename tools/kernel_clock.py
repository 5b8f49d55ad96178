#!/usr/bin/env python3
"""Where a decode step's critical path goes, kernel by kernel, from a -DTROUPE_KERNEL_CLOCK build.

  cmake -B build -DTROUPE_KERNEL_CLOCK=ON && ninja -C build troupe
  TROUPE_KERNEL_CLOCK=/tmp/clock.bin troupe bench decode --model M --load-format dummy --batch 1
  kernel_clock.py /tmp/clock.bin [LAUNCHES]   (LAUNCHES of one step shown, 14 unless given)

The build records, for every CTA of every overlapped kernel (kernels/common.cuh), when it reached
griddepcontrol.wait (having issued its loads of weights and cached keys) and when the wait let it go
(every earlier kernel finished), and clock_mark() points inside a kernel (kernels/kernel_clock.hpp).
Consecutive records of one grid size and shared-memory size are one launch; launches more than 50 us
apart are separate steps (the LM head's GEMM and the host sit between them); the steps with the most
launches are the replayed graphs. Printed: one step's first launches on a common clock, then per kind
of launch (grid, shared bytes), over the second half of the record, the mean time from its last CTA's
release to the next launch's: what that kernel adds to the critical path after its wait (its own work,
its loads that were not issued early, and the hand-over). The records cost time themselves (an atomic
and a store per CTA, more per mark): compare launches within one build, not against an uninstrumented
step.
"""
import statistics
import struct
import sys
from collections import defaultdict

MARK = 0x80000000


def launches(path):
    data = open(path, 'rb').read()
    count = min(struct.unpack_from('<Q', data, 0)[0], (len(data) - 8) // 32)
    out = []
    for i in range(count):
        before, after, grid, _block, _sm, smem = struct.unpack_from('<QQIIII', data, 8 + 32 * i)
        if grid & MARK:
            if out:
                out[-1]['marks'][grid & 0xffff].append(before)
            continue
        k = out[-1] if out else None
        if k and k['grid'] == grid and k['smem'] == smem and after - k['a1'] < 20000 and k['n'] < grid:
            k['n'] += 1
            k['b0'], k['b1'] = min(k['b0'], before), max(k['b1'], before)
            k['a0'], k['a1'] = min(k['a0'], after), max(k['a1'], after)
        else:
            out.append(dict(grid=grid, smem=smem, n=1, b0=before, b1=before, a0=after, a1=after, marks=defaultdict(list)))
    return out


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    shown = int(sys.argv[2]) if len(sys.argv) == 3 else 14
    ks = launches(sys.argv[1])
    if not ks:
        sys.exit('no records')
    steps, cur = [], [ks[0]]
    for k in ks[1:]:
        if k['a0'] - cur[-1]['a1'] > 50000:
            steps.append(cur)
            cur = [k]
        else:
            cur.append(k)
    steps.append(cur)
    longest = max(len(s) for s in steps)
    full = [s for s in steps if len(s) == longest]
    print(f'{len(ks)} launches, {len(steps)} steps, {len(full)} of {longest} launches; '
          f'first to last release of those (us): {[round((s[-1]["a1"] - s[0]["a0"]) / 1e3, 1) for s in full[:6]]}')
    step = full[len(full) // 2]
    t0 = step[0]['a0']
    print('one step, us from its first release: grid, shared bytes, CTAs, arrivals, releases, marks')
    for k in step[:shown]:
        marks = ' '.join(f'm{t}:{(max(v) - t0) / 1e3:.2f}' for t, v in sorted(k['marks'].items()))
        print(f"  {k['grid']:5d} {k['smem']:7d} {k['n']:5d}  {(k['b0'] - t0) / 1e3:7.2f}..{(k['b1'] - t0) / 1e3:7.2f}"
              f"  {(k['a0'] - t0) / 1e3:7.2f}..{(k['a1'] - t0) / 1e3:7.2f}  {marks}")
    # Per kind, over every pair of consecutive launches of the record's second half (the replays)
    # less than 50 us apart: graphs replayed back to back (tensor parallel) and kernels the clock does
    # not record (cuBLASLt's) leave no gaps to cut whole steps by, but every launch still has a next.
    added = defaultdict(list)
    marks = defaultdict(list)
    tail = ks[len(ks) // 2:]
    for k, nxt in zip(tail, tail[1:]):
        if nxt['a0'] - k['a1'] > 50000:
            continue
        key = (k['grid'], k['smem'])
        added[key].append((nxt['a1'] - k['a1']) / 1e3)
        for t, v in k['marks'].items():
            marks[(key, t)].append((max(v) - k['a1']) / 1e3)
    print('per kind of launch (grid, shared bytes): launches, mean us from its release to the next release')
    for key in sorted(added, key=lambda key: -sum(added[key])):
        print(f'  {key}: {len(added[key])}, {statistics.mean(added[key]):.2f}')
    for key in sorted(marks):
        print(f'  mark {key[1]} of {key[0]}: {statistics.mean(marks[key]):.2f} us after the release')


if __name__ == '__main__':
    main()
