package cnitest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"
)

// Latencies are the durations of repeated calls.
type Latencies []time.Duration

// Percentile is the nearest-rank p-th percentile (0 < p ≤ 100); 0 for none.
func (l Latencies) Percentile(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	rank := int(p/100*float64(len(s)) + 0.999999)
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

// String is "n=N p50=… p99=… max=…".
func (l Latencies) String() string {
	return fmt.Sprintf("n=%d p50=%v p99=%v max=%v", len(l), l.Percentile(50), l.Percentile(99), l.Percentile(100))
}

// AddDelLatency makes n pod namespaces, runs ADD for each with at most
// parallel calls at once (1 = one after another), then DEL for each the
// same way, and returns the latency of every call. The plugins run with
// hostNS as their netns (nil = current). Namespaces are removed in
// t.Cleanup; a DEL is also registered for each pod in case the run stops
// half-way. The first failing call stops the run and is returned.
func AddDelLatency(t testing.TB, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, hostNS ns.NetNS, n, parallel int) (add, del Latencies, err error) {
	t.Helper()
	parallel = max(parallel, 1)
	ctx := context.Background()
	rts := make([]*libcni.RuntimeConf, n)
	for i := range rts {
		pod := NewPodNS(t)
		rt := RuntimeConf(UniqueName(t, fmt.Sprintf("lat%d", i)), pod.Path(), "eth0", nil)
		rts[i] = rt
		t.Cleanup(func() { do(hostNS, func() error { return cni.DelNetworkList(ctx, list, rt) }) })
	}
	run := func(op func(*libcni.RuntimeConf) error) (Latencies, error) {
		lat := make(Latencies, n)
		errs := make([]error, n)
		sem := make(chan struct{}, parallel)
		var wg sync.WaitGroup
		for i, rt := range rts {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				errs[i] = do(hostNS, func() error {
					start := time.Now()
					err := op(rt)
					lat[i] = time.Since(start)
					return err
				})
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				return lat, fmt.Errorf("cnitest: pod %d (%s): %w", i, rts[i].ContainerID, err)
			}
		}
		return lat, nil
	}
	if add, err = run(func(rt *libcni.RuntimeConf) error {
		_, err := cni.AddNetworkList(ctx, list, rt)
		return err
	}); err != nil {
		return add, nil, fmt.Errorf("ADD: %w", err)
	}
	if del, err = run(func(rt *libcni.RuntimeConf) error { return cni.DelNetworkList(ctx, list, rt) }); err != nil {
		return add, del, fmt.Errorf("DEL: %w", err)
	}
	return add, del, nil
}
