package main

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// table prints aligned columns (two spaces apart), the way kubectl and
// crictl print lists. Empty cells print as "-". Lines added with line are
// printed as they are between the rows, without breaking the alignment
// of the rows around them (ss -i's info lines).
type table struct {
	w    io.Writer
	rows [][]string // a nil row stands for the next raw line
	raw  []string
}

func newTable(w io.Writer, headers ...string) *table {
	t := &table{w: w}
	if len(headers) > 0 {
		t.row(headers...)
	}
	return t
}

func (t *table) row(cells ...string) {
	out := make([]string, len(cells))
	for i, c := range cells {
		if c == "" {
			c = "-"
		}
		// A tab or newline in a value (a pod name from CNI_ARGS) would
		// break the columns.
		out[i] = strings.Map(func(r rune) rune {
			if r == '\t' || r == '\n' || r == '\r' {
				return ' '
			}
			return r
		}, c)
	}
	t.rows = append(t.rows, out)
}

// line adds a line printed as it is, after the rows so far.
func (t *table) line(s string) {
	t.rows = append(t.rows, nil)
	t.raw = append(t.raw, s)
}

// flush prints the table: every column but the last padded to its widest
// cell.
func (t *table) flush() error {
	var width []int
	for _, r := range t.rows {
		for i, c := range r {
			if i == len(width) {
				width = append(width, 0)
			}
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	raw := 0
	for _, r := range t.rows {
		if r == nil {
			b.WriteString(t.raw[raw] + "\n")
			raw++
			continue
		}
		for i, c := range r {
			b.WriteString(c)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", width[i]-utf8.RuneCountInString(c)+2))
			}
		}
		b.WriteString("\n")
	}
	t.rows, t.raw = nil, nil
	_, err := io.WriteString(t.w, b.String())
	return err
}

func itoa[T ~int | ~int32 | ~int64 | ~uint | ~uint8 | ~uint16 | ~uint32 | ~uint64](v T) string {
	return fmt.Sprint(v)
}

// addrPort prints an address and port as ss does ("10.0.0.1:80"; the
// unspecified address as "*").
func addrPort(ap netip.AddrPort) string {
	if !ap.IsValid() {
		return "*:*"
	}
	a := "*"
	if ap.Addr().IsValid() && !ap.Addr().IsUnspecified() {
		a = ap.Addr().String()
	}
	p := "*"
	if ap.Port() != 0 {
		p = fmt.Sprint(ap.Port())
	}
	return a + ":" + p
}

// prefixes joins prefixes with commas.
func prefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
