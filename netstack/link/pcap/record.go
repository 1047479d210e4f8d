package pcap

import (
	"time"

	"github.com/gopacket/gopacket"
)

// WriteRecord records data, the first bytes of a frame of length bytes on
// the wire captured at t (a capture that copied at most its snap length
// keeps the original length this way, as tcpdump -s does). data longer
// than the snap length is cut to it; length is at least len(data).
func (w *Writer) WriteRecord(t time.Time, data []byte, length int) error {
	if len(data) > w.snaplen {
		data = data[:w.snaplen]
	}
	length = max(length, len(data))
	ci := gopacket.CaptureInfo{Timestamp: t, CaptureLength: len(data), Length: length}
	w.mu.Lock()
	err := w.w.WritePacket(ci, data)
	w.mu.Unlock()
	if err != nil {
		return w.fail(err)
	}
	w.packets.Add(1)
	w.bytes.Add(uint64(len(data)))
	return nil
}

// Snaplen is the largest record the Writer keeps of a frame.
func (w *Writer) Snaplen() int { return w.snaplen }
