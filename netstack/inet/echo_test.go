package inet

import "testing"

// The interceptor proxy mode sets: none until Set, the last one Set, none
// after Set(nil).
func TestEchoInterceptor(t *testing.T) {
	var e EchoInterceptor
	if e.Load() != nil {
		t.Fatal("an interceptor before Set")
	}
	var got []uint16
	e.Set(func(r EchoRequest) { got = append(got, r.ID) })
	e.Set(func(r EchoRequest) { got = append(got, r.Seq) })
	e.Load()(EchoRequest{ID: 1, Seq: 2})
	if len(got) != 1 || got[0] != 2 {
		t.Fatalf("the last Set should receive: got %v", got)
	}
	e.Set(nil)
	if e.Load() != nil {
		t.Fatal("Set(nil) left an interceptor")
	}
}
