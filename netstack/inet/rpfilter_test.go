package inet

import "testing"

// rp_filter: the default for every NIC, a NIC's own setting over it.
func TestRPFilter(t *testing.T) {
	var f RPFilter
	f.Init(true)
	f.Set(2, false)
	if !f.Strict(1) || f.Strict(2) {
		t.Fatalf("strict default, NIC 2 off: got %v %v", f.Strict(1), f.Strict(2))
	}
	f.Set(2, true)
	f.Set(3, false)
	if !f.Strict(2) || f.Strict(3) || !f.Strict(4) {
		t.Fatalf("NIC 2 strict again, NIC 3 off: got %v %v %v", f.Strict(2), f.Strict(3), f.Strict(4))
	}
	var off RPFilter
	off.Init(false)
	if off.Strict(1) {
		t.Fatal("loose default reads strict")
	}
}
