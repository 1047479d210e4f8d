package tcp

import "github.com/cni-userstack/cni-userstack/netstack/header"

// SACK (RFC 2018; tcp_input.c tcp_sacktag_write_queue, tcp_output.c
// tcp_sack options): the sender's scoreboard of SACKed ranges, which
// recovery.go reads, and the receiver's SACK blocks built from the
// out-of-order queue.

// sackRange is one SACKed range [start, end).
type sackRange struct{ start, end uint32 }

// maxSackRanges bounds the scoreboard; past it the highest ranges are
// forgotten (they are SACKed again by the next ACKs).
const maxSackRanges = 32

// sackRcv merges the SACK blocks of an ACK into the scoreboard
// (tcp_sacktag_write_queue). Blocks outside (SND.UNA, SND.MAX] are
// ignored (D-SACK, RFC 2883, and forged blocks).
func (s *Sock) sackRcv(o *header.TCPOptions, ack, tsecr uint32, hasTS bool) {
	for i := 0; i < o.NumSACK; i++ {
		b := o.SACKBlocks[i]
		if !header.SeqLT(b.Start, b.End) {
			continue
		}
		if i == 0 && (header.SeqLEQ(b.End, ack) || o.NumSACK > 1 &&
			header.SeqGEQ(b.Start, o.SACKBlocks[1].Start) && header.SeqLEQ(b.End, o.SACKBlocks[1].End)) {
			// RFC 2883 §4: a first block below the ACK or inside the
			// second is a D-SACK: data arrived twice (RFC 8985 §6.2
			// step 4 widens reo_wnd).
			s.p.count(TCPDSACKRecv)
			s.rack.dsackThisAck = true
			probe := s.rack.probeOK && s.rack.probeSeq == b.Start
			s.rack.dsackProbe = s.rack.dsackProbe || probe
			// Only if an earlier ACK had already covered it: else
			// the ACK of the original was lost, not late.
			early := header.SeqLEQ(b.End, s.sndUna)
			if _, retrans, ok := s.sendTime(b.Start); ok && retrans && !probe && early {
				// A retransmission was spurious: the original came
				// late (Linux tcp_sacktag_one counts it as
				// reordering; RFC 8985 §6.2 step 3). A D-SACK of a
				// loss probe only says the probe was not needed
				// (§7.4.1).
				if !s.rack.reorderSeen {
					s.rack.reorderSeen = true
					s.p.count(TCPSACKReorder)
				}
			}
			continue
		}
		if header.SeqLEQ(b.End, s.sndUna) || header.SeqGT(b.End, s.sndMax) {
			continue
		}
		start := header.SeqMax(b.Start, s.sndUna)
		if end, ok := s.sackNewEnd(start, b.End); ok {
			s.rackDelivered(end, tsecr, hasTS) // RFC 8985 §6.2 steps 1–3
		}
		s.sackInsert(start, b.End)
	}
}

// sackNewEnd returns the end of the highest part of [start, end) the
// scoreboard did not hold yet.
func (s *Sock) sackNewEnd(start, end uint32) (uint32, bool) {
	for i := len(s.sacked) - 1; i >= 0 && header.SeqLT(start, end); i-- {
		r := s.sacked[i]
		if header.SeqGEQ(r.start, end) {
			continue
		}
		if header.SeqLT(r.end, end) {
			break
		}
		end = r.start
	}
	return end, header.SeqLT(start, end)
}

func (s *Sock) sackInsert(start, end uint32) {
	if cap(s.sacked) == 0 {
		s.sacked = make([]sackRange, 0, maxSackRanges)
	}
	// Ranges are sorted and disjoint; merge through a stack copy.
	merged := sackRange{start, end}
	tmp := [maxSackRanges + 1]sackRange{}
	n := 0
	inserted := false
	for _, r := range s.sacked {
		switch {
		case header.SeqLT(r.end, merged.start):
			tmp[n] = r
			n++
		case header.SeqLT(merged.end, r.start):
			if !inserted {
				tmp[n] = merged
				n++
				inserted = true
			}
			tmp[n] = r
			n++
		default:
			merged.start = header.SeqMin(merged.start, r.start)
			merged.end = header.SeqMax(merged.end, r.end)
		}
		if n >= maxSackRanges {
			break
		}
	}
	if !inserted && n < maxSackRanges {
		tmp[n] = merged
		n++
	}
	s.sacked = append(s.sacked[:0], tmp[:n]...)
}

// sackPrune drops ranges SND.UNA passed.
func (s *Sock) sackPrune() {
	n := 0
	for _, r := range s.sacked {
		if header.SeqLEQ(r.end, s.sndUna) {
			continue
		}
		if header.SeqLT(r.start, s.sndUna) {
			r.start = s.sndUna
		}
		s.sacked[n] = r
		n++
	}
	s.sacked = s.sacked[:n]
}

// sackedBelow is the SACKed bytes below seq.
func (s *Sock) sackedBelow(seq uint32) int {
	t := 0
	for _, r := range s.sacked {
		if header.SeqGEQ(r.start, seq) {
			break
		}
		t += int(header.SeqMin(r.end, seq) - r.start)
	}
	return t
}

// sackedSkip moves seq past a SACKed range it falls in and returns the
// bytes that may be sent from there before the next SACKed range (-1:
// no limit). After a timeout, go-back-N resends only what the peer has
// not SACKed (RFC 6675 §5.1: the scoreboard survives the RTO).
func (s *Sock) sackedSkip(seq uint32) (uint32, int) {
	for _, r := range s.sacked {
		if header.SeqLT(seq, r.start) {
			return seq, int(r.start - seq)
		}
		if header.SeqLT(seq, r.end) {
			seq = r.end
		}
	}
	return seq, -1
}

func (s *Sock) sackedBytes() int {
	t := 0
	for _, r := range s.sacked {
		t += int(r.end - r.start)
	}
	return t
}

// sackBlocks fills o with the receiver's SACK blocks (RFC 2018 §4): the
// block holding the most recent out-of-order segment first, then the
// others, contiguous out-of-order data merged.
func (s *Sock) sackBlocks(o *header.TCPOptions) {
	var blocks [maxOFO/64 + 4]header.SACKBlock
	n := 0
	first := -1
	for i := 0; i < len(s.ofo) && n < len(blocks); i++ {
		e := s.ofo[i]
		end := e.end
		if e.fin {
			end--
		}
		if n > 0 && header.SeqLEQ(e.seq, blocks[n-1].End) {
			blocks[n-1].End = header.SeqMax(blocks[n-1].End, end)
		} else {
			blocks[n] = header.SACKBlock{Start: e.seq, End: end}
			n++
		}
		if i == s.lastOFO {
			first = n - 1
		}
	}
	if first > 0 {
		blocks[0], blocks[first] = blocks[first], blocks[0]
	}
	k := 0
	if s.dsackPending {
		// RFC 2883 §4: a duplicate segment is reported in the first
		// block (a D-SACK), once.
		o.SACKBlocks[0] = s.dsack
		s.dsackPending = false
		k = 1
	}
	o.NumSACK = k + copy(o.SACKBlocks[k:], blocks[:n])
}

// noteDSACK remembers a duplicate segment [start, end) for the next ACK.
func (s *Sock) noteDSACK(start, end uint32) {
	if s.sackOK && header.SeqLT(start, end) {
		s.dsack, s.dsackPending = header.SACKBlock{Start: start, End: end}, true
	}
}
