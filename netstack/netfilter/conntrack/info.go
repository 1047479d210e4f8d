package conntrack

// Read-only helpers for `cni-userstack conntrack -L` (List is the dump).

var statusNames = [...]string{"SEEN_REPLY", "ASSURED", "CONFIRMED", "SRC_NAT", "DST_NAT", "SRC_NAT_DONE",
	"DST_NAT_DONE", "DYING"}

// StatusNames are the names of the bits set in st (IPS_*), lowest bit
// first.
func StatusNames(st uint32) []string {
	var out []string
	for i, n := range statusNames {
		if st&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}

// NAT says which way a flow is translated: its reply tuple is not the
// inverse of the original one. src and dst report a changed source
// (SNAT, masquerade, or a null binding that moved a port) and a changed
// destination (DNAT, redirect) of the original direction.
func (e Entry) NAT() (src, dst bool) {
	inv := e.Reply.Reverse() // an ICMP query's identifier stays in SrcPort both ways
	return e.Original.Src != inv.Src || e.Original.SrcPort != inv.SrcPort,
		e.Original.Dst != inv.Dst || e.Original.DstPort != inv.DstPort
}
