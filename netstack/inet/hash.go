package inet

// Mix is a small keyed mixing function, Jenkins' final mix as the
// kernel's jhash_3words: IPv4 picks its IP ID counter with it
// (ip_idents), IPv6 its fragment identification counter and flow label.
// d is the key.
func Mix(a, b, c, d uint32) uint32 {
	a += d
	c ^= b
	c -= b<<14 | b>>18
	a ^= c
	a -= c<<11 | c>>21
	b ^= a
	b -= a<<25 | a>>7
	c ^= b
	c -= b<<16 | b>>16
	a ^= c
	a -= c<<4 | c>>28
	b ^= a
	b -= a<<14 | a>>18
	c ^= b
	c -= b<<24 | b>>8
	return c
}
