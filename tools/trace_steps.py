#!/usr/bin/env python3
"""Where the time between a stage's steps goes, from a troupe trace (--trace-file).

  troupe generate ... --trace-file /tmp/t.json
  tools/trace_steps.py /tmp/t.json [--skip 8]

For each pipeline stage: the median micro-batch span (from the stage sending a step to its workers
to the last worker's reply), the median gap between one span's end and the next one's start (the
scheduler's turn: results to the requests, the next plan, and the messages there and back), and
per worker the median delay from the stage's start to the worker's "forward" span and that span's
length (for the worker that samples, until the sampled tokens are on the host; for the others, until
their launches are queued). Spans are in whole microseconds. The first --skip steps (start-up,
prefill) are left out.
"""
import argparse
import json
import statistics
from collections import defaultdict


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('trace')
    ap.add_argument('--skip', type=int, default=8, help='leading steps to leave out (default 8)')
    a = ap.parse_args()
    events = json.load(open(a.trace))['traceEvents']
    names = {e['tid']: e['args']['name'] for e in events if e.get('ph') == 'M'}
    spans = defaultdict(list)
    for e in events:
        if e.get('ph') == 'X':
            spans[names.get(e['tid'], str(e['tid']))].append(e)
    med = lambda v: statistics.median(v) if v else float('nan')
    for track in sorted(t for t in spans if t.startswith('stage')):
        stage = sorted(spans[track], key=lambda e: e['ts'])[a.skip:]
        if len(stage) < 2:
            continue
        by_step = {e['args'].get('step'): e for e in stage}
        gaps = [b['ts'] - (x['ts'] + x['dur']) for x, b in zip(stage, stage[1:])]
        period = [b['ts'] - x['ts'] for x, b in zip(stage, stage[1:])]
        print(f'{track}: {len(stage)} steps, period {med(period):.0f} us, micro-batch span {med([e["dur"] for e in stage]):.0f} us, '
              f'gap between spans {med(gaps):.0f} us')
        for w in sorted(t for t in spans if t.startswith('worker')):
            delays, lengths, tails = [], [], []
            for e in spans[w]:
                if e['name'] != 'forward':
                    continue
                s = by_step.get(e['args'].get('step'))
                if s is None:
                    continue
                delays.append(e['ts'] - s['ts'])
                lengths.append(e['dur'])
                tails.append(s['ts'] + s['dur'] - (e['ts'] + e['dur']))
            if delays:
                print(f'  {w}: starts {med(delays):.0f} us into the span, forward {med(lengths):.0f} us, '
                      f'span ends {med(tails):.0f} us after it')


if __name__ == '__main__':
    main()
