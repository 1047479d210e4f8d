package header

import "testing"

func TestSeqCompare(t *testing.T) {
	tests := []struct {
		a, b             uint32
		lt, leq, gt, geq bool
	}{
		{1, 2, true, true, false, false},
		{2, 1, false, false, true, true},
		{5, 5, false, true, false, true},
		{0xffffffff, 0, true, true, false, false}, // wraps
		{0, 0xffffffff, false, false, true, true},
		{0xfffffff0, 0x10, true, true, false, false},
		{0x10, 0x80000000, true, true, false, false},
		{0x10, 0x80000011, false, false, true, true}, // more than 2^31 apart: the other way
	}
	for _, tt := range tests {
		if SeqLT(tt.a, tt.b) != tt.lt || SeqLEQ(tt.a, tt.b) != tt.leq ||
			SeqGT(tt.a, tt.b) != tt.gt || SeqGEQ(tt.a, tt.b) != tt.geq {
			t.Errorf("%#x vs %#x: lt %v leq %v gt %v geq %v", tt.a, tt.b,
				SeqLT(tt.a, tt.b), SeqLEQ(tt.a, tt.b), SeqGT(tt.a, tt.b), SeqGEQ(tt.a, tt.b))
		}
	}
}

func TestSeqInWindow(t *testing.T) {
	tests := []struct {
		seq, start, size uint32
		want             bool
	}{
		{100, 100, 10, true},
		{109, 100, 10, true},
		{110, 100, 10, false},
		{99, 100, 10, false},
		{100, 100, 0, false},
		{5, 0xfffffffa, 20, true}, // window across the wrap
		{0xfffffff9, 0xfffffffa, 20, false},
	}
	for _, tt := range tests {
		if got := SeqInWindow(tt.seq, tt.start, tt.size); got != tt.want {
			t.Errorf("SeqInWindow(%#x, %#x, %d) = %v", tt.seq, tt.start, tt.size, got)
		}
	}
	if SeqMax(0xfffffff0, 5) != 5 || SeqMin(0xfffffff0, 5) != 0xfffffff0 {
		t.Error("SeqMax/SeqMin across the wrap")
	}
}
