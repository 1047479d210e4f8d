package netfilter

import (
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
)

func TestHooksRunInPriorityOrderUntilVerdict(t *testing.T) {
	var h Hooks
	var order []string
	add := func(name string, pri int, v Verdict) {
		h.Register(Ops{Hook: PreRouting, Priority: pri, Name: name, Fn: func(_ *buf.SKB, st State) Verdict {
			if st.Hook != PreRouting || st.In != 3 {
				t.Errorf("%s saw state %+v", name, st)
			}
			order = append(order, name)
			return v
		}})
	}
	add("filter", PriFilter, Accept())
	add("raw", PriRaw, Accept())
	add("snat", PriNATSrc, Accept())
	skb := buf.Alloc(0, 0)
	defer skb.Consume()
	if v := h.Run(PreRouting, skb, 3, 0); !v.Accepted() {
		t.Fatalf("verdict %+v", v)
	}
	if got := order; len(got) != 3 || got[0] != "raw" || got[1] != "filter" || got[2] != "snat" {
		t.Fatalf("order %v", got)
	}
	reason := buf.NewDropReason("TEST_NF_DROP")
	add("dropper", PriMangle, Drop(reason))
	order = nil
	v := h.Run(PreRouting, skb, 3, 0)
	if !v.Dropped() || v.Reason() != reason {
		t.Fatalf("verdict %+v", v)
	}
	if len(order) != 2 || order[1] != "dropper" {
		t.Fatalf("functions after a drop must not run: %v", order)
	}
	h.Unregister(PreRouting, "dropper")
	if v := h.Run(PreRouting, skb, 3, 0); !v.Accepted() {
		t.Fatal("unregistered dropper still runs")
	}
	if h.Active(Forward) || !h.Active(PreRouting) {
		t.Fatal("Active wrong")
	}
	var nilHooks *Hooks
	if !nilHooks.Run(LocalIn, skb, 0, 0).Accepted() {
		t.Fatal("nil hooks must accept")
	}
}
