package main

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
)

// table prints aligned columns (two spaces apart), the way kubectl and
// crictl print lists. Empty cells print as "-".
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, headers ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	if len(headers) > 0 {
		t.row(headers...)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
		// A tab or newline in a value (a pod name from CNI_ARGS) would
		// break the columns.
		cells[i] = strings.Map(func(r rune) rune {
			if r == '\t' || r == '\n' || r == '\r' {
				return ' '
			}
			return r
		}, cells[i])
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

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
