package inet

import (
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
)

// Loopback and deferred ICMP errors run from the backlog on the clock,
// never on the caller's stack; the backlog holds BacklogMax entries and
// drops the rest (CPU_BACKLOG; OutDiscards for looped packets).
func TestBacklog(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			r := newRig(t, f)
			p := f.packet(f.src, f.dst1)
			orig := buf.FromBytes(buf.MaxHeadroom, p)
			r.o.DeferICMPError(orig, 3, 1)
			orig.Consume() // not the backlog's: it queued a clone
			for range BacklogMax + 2 {
				skb := buf.FromBytes(buf.MaxHeadroom, p)
				skb.Drops = &r.drops
				skb.InNIC, skb.OutNIC = 0, 1
				skb.CB[0] = 0xff // the family's flags: cleared on receive
				r.o.Loopback(skb)
			}
			if len(r.looped) != 0 || len(r.errs) != 0 {
				t.Fatal("processed on the caller's stack")
			}
			if r.disc.Load() != 3 || r.drops.Get(DropBacklogFull) != 3 {
				t.Fatalf("overflow: OutDiscards %d, CPU_BACKLOG %d, want 3", r.disc.Load(), r.drops.Get(DropBacklogFull))
			}
			r.clk.Advance(0) // runs every budget-sized batch
			if len(r.errs) != 1 || r.errs[0] != [3]uint32{3, 1, 0} {
				t.Fatalf("ICMP errors %v", r.errs)
			}
			if len(r.looped) != BacklogMax-1 || r.rcvd.Load() != BacklogMax-1 {
				t.Fatalf("looped %d, InReceives %d, want %d", len(r.looped), r.rcvd.Load(), BacklogMax-1)
			}
			for _, skb := range r.looped {
				if skb.CB[0] != 0 || skb.Csum != buf.CsumUnnecessary || f.fam.Dst(skb.NetworkHeader()) != f.dst1 {
					t.Fatalf("looped packet: CB %v, csum %v, network header %x", skb.CB[:CBBacklogEnd], skb.Csum, skb.NetworkHeader())
				}
				skb.Consume()
			}
			// PREROUTING sees looped packets (in NIC 0): a drop there
			// ends them before local delivery.
			r.looped = nil
			var in []int
			r.hook(netfilter.PreRouting, func(_ *buf.SKB, st netfilter.State) netfilter.Verdict {
				in = append(in, st.In)
				return netfilter.Drop(buf.DropNotSpecified)
			})
			skb := buf.FromBytes(buf.MaxHeadroom, p)
			skb.Drops = &r.drops
			r.o.Loopback(skb)
			r.clk.Advance(0)
			if len(in) != 1 || in[0] != 0 || len(r.looped) != 0 || r.drops.Get(buf.DropNotSpecified) != 1 {
				t.Fatalf("PREROUTING saw %v, delivered %d", in, len(r.looped))
			}
		})
	}
}
