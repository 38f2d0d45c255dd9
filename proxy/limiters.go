package proxy

import (
	"sync"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// limiters are token buckets by key, made on first use. When max is set
// the keys are the client's choice (a claimed API id): past max buckets the
// set starts over rather than grow, which gives a guesser a few more tries
// per thousands of requests.
type limiters struct {
	rate  rate.Limit
	burst int
	max   int64 // 0: unbounded (keys the server chose)
	m     sync.Map
	n     atomic.Int64
}

func newLimiters(r float64, burst int, max int64) *limiters {
	return &limiters{rate: rate.Limit(r), burst: burst, max: max}
}

// get returns key's bucket, making it if needed.
func (l *limiters) get(key any) *rate.Limiter {
	if b, ok := l.m.Load(key); ok {
		return b.(*rate.Limiter)
	}
	if l.max > 0 && l.n.Load() >= l.max {
		l.m.Clear()
		l.n.Store(0)
	}
	b, loaded := l.m.LoadOrStore(key, rate.NewLimiter(l.rate, l.burst))
	if !loaded {
		l.n.Add(1)
	}
	return b.(*rate.Limiter)
}

// exhausted says key's bucket exists and is empty, without making one: a
// key that never failed costs no bucket.
func (l *limiters) exhausted(key any) bool {
	b, ok := l.m.Load(key)
	return ok && b.(*rate.Limiter).Tokens() < 1
}
