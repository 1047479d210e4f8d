package header

// TCP sequence-number arithmetic (RFC 9293 §3.4): sequence numbers live in
// a 2^32 space and compare modulo 2^32, "=<" meaning "less than or equal
// (modulo 2**32)". Two numbers compare correctly while they are within
// 2^31 of each other, which the windows (at most 2^30 with RFC 7323
// scaling) guarantee.

// SeqLT reports a < b modulo 2^32.
func SeqLT(a, b uint32) bool { return int32(a-b) < 0 }

// SeqLEQ reports a <= b modulo 2^32.
func SeqLEQ(a, b uint32) bool { return int32(a-b) <= 0 }

// SeqGT reports a > b modulo 2^32.
func SeqGT(a, b uint32) bool { return int32(a-b) > 0 }

// SeqGEQ reports a >= b modulo 2^32.
func SeqGEQ(a, b uint32) bool { return int32(a-b) >= 0 }

// SeqInWindow reports start <= seq < start+size modulo 2^32: the RFC 9293
// §3.10.7.4 test "RCV.NXT =< SEG.SEQ < RCV.NXT+RCV.WND". An empty window
// contains nothing.
func SeqInWindow(seq, start, size uint32) bool { return seq-start < size }

// SeqMax returns the later of a and b modulo 2^32.
func SeqMax(a, b uint32) uint32 {
	if SeqGT(a, b) {
		return a
	}
	return b
}

// SeqMin returns the earlier of a and b modulo 2^32.
func SeqMin(a, b uint32) uint32 {
	if SeqLT(a, b) {
		return a
	}
	return b
}
