package detector

// link is embedded in a tracked key's state to put it on an lru list without
// a separate allocation per element.
type link[T any] struct {
	prev, next *T
}

type linked[T any] interface {
	*T
	lk() *link[T]
}

// lru orders states by last use: front is the freshest, back the stalest.
type lru[T any, P linked[T]] struct {
	front, back *T
	n           int
}

func (l *lru[T, P]) pushFront(e *T) {
	P(e).lk().prev = nil
	P(e).lk().next = l.front
	if l.front != nil {
		P(l.front).lk().prev = e
	}
	l.front = e
	if l.back == nil {
		l.back = e
	}
	l.n++
}

func (l *lru[T, P]) remove(e *T) {
	k := P(e).lk()
	if k.prev != nil {
		P(k.prev).lk().next = k.next
	} else {
		l.front = k.next
	}
	if k.next != nil {
		P(k.next).lk().prev = k.prev
	} else {
		l.back = k.prev
	}
	k.prev, k.next = nil, nil
	l.n--
}

// touch moves e to the front.
func (l *lru[T, P]) touch(e *T) {
	if l.front == e {
		return
	}
	l.remove(e)
	l.pushFront(e)
}

// prevOf returns the next fresher element than e (towards the front).
func (l *lru[T, P]) prevOf(e *T) *T { return P(e).lk().prev }

// stalestIdle returns the stalest element among the scan stalest for which
// busy is false, or nil.
func (l *lru[T, P]) stalestIdle(scan int, busy func(*T) bool) *T {
	e := l.back
	for i := 0; e != nil && i < scan; i++ {
		if !busy(e) {
			return e
		}
		e = l.prevOf(e)
	}
	return nil
}
