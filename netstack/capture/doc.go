// Package capture owns live packet capture from inside the stack, the
// daemon's side of `cni-userstack pcap` (tcpdump's): a Session puts a tap
// on the device list (dev.Devices.AddTap, ptype_all as net/packet's
// packet_rcv sees it), keeps the frames of the selected NICs that pass a
// Filter, and writes them as a pcap stream (link/pcap's Writer,
// LINKTYPE_ETHERNET). Filter is a small tcpdump-like language, compiled
// once and matched on the packet path while a capture runs.
//
// Not owned here: where the stream goes (the daemon serves it over its
// API; the CLI writes files), which NIC a pod is (the daemon), frame
// decoding for display (the CLI).
//
// # Theory of operation
//
// The tap runs on the goroutine that carries the frame: a NIC's receive
// goroutine (received frames, before dispatch, stamped with the batch's
// receive time) or the transmit flusher (frames about to reach the link,
// GSO super-packets whole, stamped with the clock). It checks the NIC
// selection, runs the filter (no allocation), copies at most Snaplen bytes
// into the session's queue and rings the writer; it never waits for the
// writer. WritePcap, on its own goroutine, swaps the queue out under the
// lock and writes each record, flushing after every batch. The session
// ends when MaxPackets frames have been written (and the tap stops looking
// at frames once that many matched), when Stop is called (the queue is
// drained first, so a capture bounded by time or interrupted by the user
// leaves a complete stream), or when WritePcap's context ends (the reader
// went away: the queue is discarded). The tap is removed in every case.
//
// Cost when no capture runs: none of this package; dev's tap list is empty
// and its per-batch load of that list is all the packet path pays. While
// one runs, every frame of every NIC pays the tap's call and NIC check,
// selected ones the filter, matched ones a copy.
//
// Limits: the queue holds at most QueueLen frames (default 4096) and
// QueueBytes bytes (default 16 MiB, at most 256 MiB); a frame past either
// is dropped and counted (Stats.Dropped), as a full AF_PACKET ring drops.
// A filter is at most MaxFilterLen bytes and MaxFilterDepth levels deep.
//
// # Filter language
//
// A subset of pcap-filter(7), on Ethernet frames carrying IPv4 or ARP:
//
//	expr      = term { ("or" | "||") term }
//	term      = factor { ("and" | "&&") factor }
//	factor    = ("not" | "!") factor | "(" expr ")" | primitive
//	primitive = [src|dst] host ADDR         IPv4 source/destination, or ARP sender/target
//	          | [src|dst] net ADDR/LEN      the same for a prefix
//	          | [tcp|udp] [src|dst] port N  TCP or UDP port (first fragments only)
//	          | [tcp|udp] [src|dst] portrange N-M
//	          | tcp | udp | icmp | ip proto N | proto N
//	          | ip | arp | ether proto N    EtherType (N decimal or 0x hex)
//	          | ether [src|dst] host MAC
//	          | inbound | outbound          received or sent by the NIC
//	          | len (< | <= | > | >= | = | !=) N | less N | greater N
//
// "and" binds tighter than "or"; without src or dst a primitive matches
// either end. Examples: "icmp", "host 10.1.0.5 and tcp port 80",
// "not arp and (udp port 53 or tcp port 53)", "src net 10.1.0.0/24 and
// outbound". Unlike tcpdump, a repeated qualifier is not implied ("host a
// or b" is an error: write "host a or host b") and ports are numbers.
package capture
