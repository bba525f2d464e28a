package loadgen

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
)

const (
	wheelTick = 10 * time.Millisecond
	wheelSize = 2048 // slots of wheelTick: 20 s, longer than any call
	chunkMax  = 64 << 10
	// catchUp is the most the generator sends at once to catch up after
	// it was not scheduled, or the guard did not read: what is more is
	// not sent and counted (the rate sent then shows the shortfall).
	catchUp = 500 * time.Millisecond
	// slowWrite is Asterisk's default writetimeout: a write to a manager
	// session blocked for longer makes Asterisk drop the session.
	slowWrite = 100 * time.Millisecond
)

// Attack kinds, after the fixtures.
const (
	AttackBurst      = "burst"       // 10 calls/s behind 10 prefixes (200 in attack-mixed)
	AttackPJSIPHunt  = "pjsip-hunt"  // 3 calls/s behind 6 prefixes (300 in attack-mixed)
	AttackBruteForce = "brute-force" // wrong secrets from a new address (127.0.0.4)
	AttackSlowHunt   = "slow-hunt"   // one call every ~20 s behind rotating prefixes
)

var attackKinds = []string{AttackBurst, AttackPJSIPHunt, AttackBruteForce, AttackSlowHunt}

// call is one live call of the generator.
type call struct {
	vals [numPH]string
	tpl  *callTemplate
	att  *attack // nil: legitimate
	slot int
	dead bool // hung up by the guard: its teardown is not sent again
}

// attack is one attack placed in the run.
type attack struct {
	Kind      string
	Extension string // "SIP/8000" (empty for brute force)
	Addr      netip.Addr
	Start     time.Duration // from the start of the run

	tech     string
	ext      string
	name     string
	every    time.Duration
	maxSteps int
	steps    int
	next     time.Time
	started  bool
	shadow   *detector.Detector
	prefixes []string
	number   string
	live     map[string]*call

	// filled in by the generator and the action handlers (under gen.mu)
	acted      bool      // a Hangup for its extension or a ban of its address arrived
	hungupAt   time.Time // arrival of the guard's first Hangup action for its extension
	bannedAt   time.Time // the guard's ban of its address (its log's time)
	tripAt     time.Time // when the generator began writing the frame on which the guard's rules trip
	tripSet    bool
	tripRule   string
	callsSent  int // calls that got a channel
	attempts   int // calls or authentication attempts sent
	callsAtAct int
}

// generator builds the event stream.
type generator struct {
	opts  Options
	tpl   *templates
	rng   *rand.Rand
	srv   *server
	dcfg  detector.Config
	pol   config.Policy
	start time.Time
	clock func() time.Time // time.Now; a fake one in tests

	mu        sync.Mutex
	attacks   []*attack
	byExt     map[string]*attack // "SIP/8000"
	byChannel map[string]*call   // live attack channels
	inject    []*call            // hung up by the guard: teardown to send
	legitHit  map[string]int     // legitimate extensions or addresses acted on

	// generator goroutine only
	wheel      [wheelSize][]*call
	wheelPos   int64
	seq        uint64 // uniqueid sequence
	chanSeq    uint64
	sessSeq    uint64
	nLegit     int
	registered []bool
	callsOf    []uint16
	perm       []int32
	nextLegit  int
	legitCalls uint64

	sent        atomic.Uint64 // frames written
	bytes       atomic.Uint64
	written     []atomic.Uint64 // frames written to the guard's event sessions, by eventLabels
	writes      atomic.Uint64   // write calls to the guard's sockets
	maxWrite    atomic.Int64    // longest single write, ns
	slowWrites  atomic.Uint64   // writes blocked for more than slowWrite
	behindTicks atomic.Uint64
	skipped     atomic.Uint64 // events not sent: the guard was not reading or the generator not running
	genCPU      time.Duration // CPU time of the generator's thread
	niceErr     error         // why the generator's thread kept its priority
}

func newGenerator(opts Options, tpl *templates, cfg *config.Config) *generator {
	g := &generator{
		opts:      opts,
		tpl:       tpl,
		rng:       rand.New(rand.NewPCG(uint64(opts.Seed), 0x5eed)),
		dcfg:      cfg.Detector(),
		pol:       cfg.Policy,
		byExt:     map[string]*attack{},
		byChannel: map[string]*call{},
		legitHit:  map[string]int{},
		seq:       1,
		clock:     time.Now,
		written:   make([]atomic.Uint64, len(eventLabels)),
	}
	g.nLegit = opts.Extensions
	g.registered = make([]bool, g.nLegit)
	g.callsOf = make([]uint16, g.nLegit)
	g.perm = make([]int32, g.nLegit)
	for i := range g.perm {
		g.perm[i] = int32(i)
	}
	g.rng.Shuffle(len(g.perm), func(i, j int) { g.perm[i], g.perm[j] = g.perm[j], g.perm[i] })
	g.planAttacks()
	return g
}

func legitExt(i int) string { return strconv.Itoa(10000 + i) }

func legitIP(i int) string {
	i++
	return "10." + strconv.Itoa(i>>16&255) + "." + strconv.Itoa(i>>8&255) + "." + strconv.Itoa(i&255)
}

func isLegitExt(name string) bool {
	n, err := strconv.Atoi(name)
	return err == nil && n >= 10000 && len(name) == 5
}

// maxAttacks is how many attacks have an address of their own.
const maxAttacks = 3 * 254

// attackAddr is the k-th attack's address, in the documentation networks
// (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24): never a legitimate
// phone's (10.0.0.0/8) nor another attack's.
func attackAddr(k int) netip.Addr {
	nets := [3][3]byte{{203, 0, 113}, {198, 51, 100}, {192, 0, 2}}
	n := nets[k/254%3]
	return netip.AddrFrom4([4]byte{n[0], n[1], n[2], byte(1 + k%254)})
}

// planAttacks places the attacks at random moments (seeded).
func (g *generator) planAttacks() {
	d := g.opts.Duration
	slow := g.opts.SlowInterval
	if max := d / 8; slow > max {
		slow = max
	}
	if slow < 500*time.Millisecond {
		slow = 500 * time.Millisecond
	}
	for k := 0; k < g.opts.Attacks; k++ {
		a := &attack{Kind: attackKinds[k%len(attackKinds)], live: map[string]*call{}}
		a.Addr = attackAddr(k)
		switch a.Kind {
		case AttackBurst:
			a.tech, a.ext, a.name = "SIP", strconv.Itoa(8000+k), "Alice"
			a.every, a.maxSteps = 100*time.Millisecond, 300
			a.prefixes = []string{"001144", "0044", "01144", "1144", "011044", "00044", "9001144", "90044", "901144", "+44"}
			a.number = "20794600" + strconv.Itoa(10+k%90)
		case AttackPJSIPHunt:
			a.tech, a.ext, a.name = "PJSIP", strconv.Itoa(8000+k), "Carol"
			a.every, a.maxSteps = 333*time.Millisecond, 300
			a.prefixes = []string{"00972", "011972", "972", "000972", "9011972", "900972"}
			a.number = "20794605" + strconv.Itoa(10+k%90)
		case AttackBruteForce:
			a.every, a.maxSteps = 200*time.Millisecond, 300
			a.prefixes = []string{"200", "200", "200", "201", "1000", "1001", "1002", "admin", "100", "101"}
		case AttackSlowHunt:
			a.tech, a.ext, a.name = "SIP", strconv.Itoa(8000+k), "Dave"
			a.every, a.maxSteps = slow, 30
			a.prefixes = []string{"0044", "001144", "01144", "011044", "00044", "9001144"}
			a.number = "20794607" + strconv.Itoa(10+k%90)
		}
		if a.ext != "" {
			a.Extension = a.tech + "/" + a.ext
			g.byExt[a.Extension] = a
		}
		// Every attack trips by its fifth step: it starts early enough for
		// that and a second more before the run ends.
		span := 4*a.every + time.Second
		lo, hi := d/20, d-span
		if hi <= lo {
			hi = lo + 1
		}
		a.Start = lo + time.Duration(g.rng.Int64N(int64(hi-lo)))
		a.shadow = detector.New(g.dcfg)
		g.attacks = append(g.attacks, a)
	}
	slices.SortFunc(g.attacks, func(x, y *attack) int { return int(x.Start - y.Start) })
}

// batch is the frames of one tick.
type batch struct {
	buf    []byte
	cuts   []int // chunk ends
	mask   uint32
	tv     string
	now    time.Time
	n      int      // frames
	labels []uint32 // frames by eventLabels
	trips  []tripMark
}

func (b *batch) reset(mask uint32, now time.Time) {
	b.buf, b.cuts, b.trips, b.n = b.buf[:0], b.cuts[:0], b.trips[:0], 0
	if len(b.labels) != len(eventLabels) {
		b.labels = make([]uint32, len(eventLabels))
	}
	clear(b.labels)
	b.mask, b.now, b.tv = mask, now, eventTV(now)
}

type tripMark struct {
	a   *attack
	off int
}

// cutAt ends a chunk at off, so that the frame there starts a write.
func (b *batch) cutAt(off int) {
	if off == 0 {
		return
	}
	if i, found := slices.BinarySearch(b.cuts, off); !found {
		b.cuts = slices.Insert(b.cuts, i, off)
	}
}

func (b *batch) frame(f *tframe, vals *[numPH]string) bool {
	if f.class&b.mask != f.class {
		return false
	}
	vals[pTV] = b.tv
	b.buf = f.render(b.buf, vals)
	b.n++
	if f.label >= 0 && f.label < len(b.labels) {
		b.labels[f.label]++
	}
	last := 0
	if len(b.cuts) > 0 {
		last = b.cuts[len(b.cuts)-1]
	}
	if len(b.buf)-last >= chunkMax {
		b.cuts = append(b.cuts, len(b.buf))
	}
	return true
}

func (g *generator) uid(now time.Time) string {
	g.seq++
	return strconv.FormatInt(now.Unix(), 10) + "." + strconv.FormatUint(g.seq, 10)
}

func (g *generator) channel(tech, name string) string {
	g.chanSeq++
	b := make([]byte, 0, len(tech)+len(name)+10)
	b = append(b, tech...)
	b = append(b, '/')
	b = append(b, name...)
	b = append(b, '-')
	b = appendHex8(b, g.chanSeq)
	return string(b)
}

func (g *generator) bridgeID() string {
	g.chanSeq++
	b := make([]byte, 0, 36)
	b = appendHex8(b, g.chanSeq)
	b = append(b, "-1a2b-4c3d-8e4f-0000"...)
	b = appendHex8(b, g.chanSeq*2654435761)
	return string(b)
}

func (g *generator) sipSession() string {
	g.sessSeq++
	return "0x7fa2b4" + hex6(g.sessSeq&0xffffff)
}

// newCall fills the values of a call through the carrier.
func (g *generator) newCall(tpl *callTemplate, tech, ext, name, ip, number string, now time.Time) *call {
	c := &call{tpl: tpl}
	v := &c.vals
	v[pCH] = g.channel(tech, ext)
	v[pOUT] = g.channel("SIP", "carrier")
	v[pUID] = g.uid(now)
	v[pOUID] = g.uid(now)
	v[pBR] = g.bridgeID()
	v[pNUM] = number
	v[pEXT] = ext
	v[pNAME] = name
	v[pIP] = ip
	if tech == "PJSIP" {
		g.sessSeq++
		v[pSESS] = strconv.FormatUint(g.sessSeq, 10) + "-4242@" + ip
	} else {
		v[pSESS] = g.sipSession()
	}
	v[pCAUSE], v[pCAUSETXT] = "16", "Normal Clearing"
	return c
}

// schedule puts the call's teardown d from now.
func (g *generator) schedule(c *call, d time.Duration) {
	slot := g.wheelPos + int64(d/wheelTick) + 1
	c.slot = int(slot % wheelSize)
	g.wheel[c.slot] = append(g.wheel[c.slot], c)
}

// nationalNumber is a London number, 020 and 8 digits: one format, so no
// destination is ever dialled behind two prefixes (prefix_guess compares
// the last 8 digits), and no access code (00, 011, +) in front.
func (g *generator) nationalNumber() string {
	b := make([]byte, 0, 11)
	b = append(b, "020"...)
	n := g.rng.Uint64N(100000000)
	for d := uint64(10000000); d > 0; d /= 10 {
		b = append(b, byte('0'+n/d%10))
	}
	return string(b)
}

func (g *generator) legitCall(b *batch) {
	i := int(g.perm[g.nextLegit])
	g.nextLegit++
	if g.nextLegit == g.nLegit {
		g.nextLegit = 0
	}
	ext, ip := legitExt(i), legitIP(i)
	g.callsOf[i]++
	if !g.registered[i] || g.callsOf[i]%10 == 0 {
		g.registered[i] = true
		var v [numPH]string
		v[pEXT], v[pIP], v[pSESS] = ext, ip, g.sipSession()
		for k := range g.tpl.sipRegister {
			b.frame(&g.tpl.sipRegister[k], &v)
		}
	}
	num := g.nationalNumber()
	c := g.newCall(&g.tpl.sipCall, "SIP", ext, "User", ip, num, b.now)
	for k := range c.tpl.setup {
		b.frame(&c.tpl.setup[k], &c.vals)
	}
	g.legitCalls++
	g.schedule(c, time.Duration(2000+g.rng.IntN(4000))*time.Millisecond)
}

// shadowFeed runs the attack's own frames (rendered from off on) through
// a detector of its own with the guard's configuration: the first frame
// that raises a critical alert the policy acts on is the tripping event.
func (g *generator) shadowFeed(a *attack, b *batch, off int) {
	if a.tripSet {
		return
	}
	r := ami.NewReader(bytes.NewReader(b.buf[off:]), ami.ReaderOptions{})
	var m ami.Message
	var ev ami.Event
	var alerts []detector.Alert
	pos := off
	for {
		if err := r.Next(&m); err != nil {
			return
		}
		frameEnd := off + int(r.Stats().Bytes)
		if !ami.Decode(&m, &ev) {
			pos = frameEnd
			continue
		}
		ev.Time = b.now
		alerts = a.shadow.Process(&ev, alerts[:0])
		for i := range alerts {
			al := &alerts[i]
			if al.Severity != detector.Critical {
				continue
			}
			acts := g.pol.Actions(al.Rule.String(), "critical")
			if !slices.Contains(acts, config.ActionHangup) && !slices.Contains(acts, config.ActionBlockIP) {
				continue
			}
			a.tripSet = true
			a.tripRule = al.Rule.String()
			b.trips = append(b.trips, tripMark{a: a, off: pos})
			b.cutAt(pos)
			return
		}
		pos = frameEnd
	}
}

// attackStep sends the attack's next step; false when the attack is over.
func (g *generator) attackStep(a *attack, b *batch) {
	off := len(b.buf)
	if !a.started {
		a.started = true
		var v [numPH]string
		v[pEXT], v[pIP] = a.ext, a.Addr.String()
		switch a.Kind {
		case AttackBurst, AttackSlowHunt:
			v[pSESS] = g.sipSession()
			for k := range g.tpl.sipRegister {
				b.frame(&g.tpl.sipRegister[k], &v)
			}
		case AttackPJSIPHunt:
			g.sessSeq++
			v[pSESS] = strconv.FormatUint(g.sessSeq, 10) + "-4242@" + v[pIP]
			for k := range g.tpl.pjsipRegister {
				b.frame(&g.tpl.pjsipRegister[k], &v)
			}
		}
	}
	switch a.Kind {
	case AttackBruteForce:
		var v [numPH]string
		v[pEXT] = a.prefixes[a.steps%len(a.prefixes)]
		v[pIP] = a.Addr.String()
		v[pSESS] = g.sipSession()
		for k := range g.tpl.sipAuthFail {
			b.frame(&g.tpl.sipAuthFail[k], &v)
		}
		a.attempts++
	default:
		p := a.prefixes[a.steps%len(a.prefixes)]
		num := p + a.number
		if a.Kind == AttackBurst {
			num = p + a.number[:len(a.number)-2] + "0" + strconv.Itoa(a.steps/len(a.prefixes)%3)
		}
		a.attempts++
		if strings.HasPrefix(num, "+") {
			var v [numPH]string
			v[pNUM], v[pIP], v[pSESS] = num, a.Addr.String(), g.sipSession()
			b.frame(&g.tpl.failedACL, &v)
			break
		}
		tpl := &g.tpl.sipCall
		if a.tech == "PJSIP" {
			tpl = &g.tpl.pjsipCall
		}
		c := g.newCall(tpl, a.tech, a.ext, a.name, a.Addr.String(), num, b.now)
		c.att = a
		if a.tech == "PJSIP" {
			c.vals[pIP] = a.Addr.String()
		}
		for k := range tpl.setup {
			b.frame(&tpl.setup[k], &c.vals)
		}
		g.mu.Lock()
		a.callsSent++
		a.live[c.vals[pCH]] = c
		g.byChannel[c.vals[pCH]] = c
		g.mu.Unlock()
		dur := 4 * time.Second
		if a.Kind == AttackSlowHunt {
			dur = a.every / 2
		}
		g.schedule(c, dur)
	}
	a.steps++
	g.shadowFeed(a, b, off)
}

func (g *generator) teardown(c *call, b *batch) {
	for k := range c.tpl.teardown {
		b.frame(&c.tpl.teardown[k], &c.vals)
	}
}

// run streams for the run's duration, every opts.Tick. It runs on an OS
// thread of its own, at opts.Nice, so its CPU time is its own and other
// work on the machine (stress-ng, the guard) does not hold it back: a real
// Asterisk writes its events when they happen, whoever else wants the CPU.
// The thread ends with the goroutine (it is never unlocked), so its
// priority is never lent to anything else.
func (g *generator) run(stop <-chan struct{}) {
	runtime.LockOSThread()
	g.niceErr = setThreadNice(g.opts.Nice)
	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_THREAD, &ru0)
	defer func() {
		_ = syscall.Getrusage(syscall.RUSAGE_THREAD, &ru1)
		g.genCPU = time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
	}()

	g.start = g.clock()
	t := time.NewTicker(g.opts.Tick)
	defer t.Stop()
	b := &batch{buf: make([]byte, 0, 8<<20)}
	var conns []*conn
	nextAttack := 0
	var active []*attack
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		now := g.clock()
		el := now.Sub(g.start)
		if el >= g.opts.Duration {
			return
		}
		var mask uint32
		conns, mask = g.srv.eventConns(conns)
		b.reset(mask, now)
		sent := g.sent.Load()
		target := uint64(g.opts.Rate * el.Seconds())
		if sk := g.skipped.Load(); target > sk {
			target -= sk
		} else {
			target = 0
		}
		if most := sent + uint64(g.opts.Rate*catchUp.Seconds()); target > most {
			g.skipped.Add(target - most)
			target = most
		}

		// Calls the guard hung up: their Hangup events.
		g.mu.Lock()
		inj := g.inject
		g.inject = nil
		g.mu.Unlock()
		for _, c := range inj {
			g.teardown(c, b)
		}
		// Calls ending now.
		cur := int64(el / wheelTick)
		for ; g.wheelPos <= cur; g.wheelPos++ {
			s := int(g.wheelPos % wheelSize)
			for _, c := range g.wheel[s] {
				if c.att != nil {
					g.mu.Lock()
					dead := c.dead
					if !dead {
						delete(c.att.live, c.vals[pCH])
						delete(g.byChannel, c.vals[pCH])
					}
					g.mu.Unlock()
					if dead {
						continue
					}
				}
				g.teardown(c, b)
			}
			clear(g.wheel[s])
			g.wheel[s] = g.wheel[s][:0]
		}
		// Attacks.
		for nextAttack < len(g.attacks) && g.attacks[nextAttack].Start <= el {
			a := g.attacks[nextAttack]
			a.next = now
			active = append(active, a)
			nextAttack++
		}
		keep := active[:0]
		for _, a := range active {
			g.mu.Lock()
			acted := a.acted
			g.mu.Unlock()
			if acted || a.steps >= a.maxSteps {
				continue
			}
			for !a.next.After(now) && a.steps < a.maxSteps {
				g.attackStep(a, b)
				a.next = a.next.Add(a.every)
			}
			keep = append(keep, a)
		}
		active = keep
		// Legitimate calls fill the rest of the tick's budget.
		if mask&classCall != 0 {
			for sent+uint64(b.n) < target {
				g.legitCall(b)
			}
		}
		g.write(conns, b)
		if g.clock().Sub(now) > g.opts.Tick {
			g.behindTicks.Add(1)
		}
	}
}

// write writes the batch to every event session, one write per chunk,
// each write timed. A tripping frame starts a chunk of its own (cutAt), so
// the frames before it are in the socket when its write begins, and its
// attack's tripAt is that moment: the reaction the run reports is measured
// from the time Asterisk would have written that event.
func (g *generator) write(conns []*conn, b *batch) {
	if len(b.buf) == 0 {
		return
	}
	if len(b.cuts) == 0 || b.cuts[len(b.cuts)-1] != len(b.buf) {
		b.cuts = append(b.cuts, len(b.buf))
	}
	from, ti := 0, 0
	for _, end := range b.cuts {
		w0 := g.clock()
		for ; ti < len(b.trips) && b.trips[ti].off < end; ti++ {
			g.mu.Lock()
			b.trips[ti].a.tripAt = w0
			g.mu.Unlock()
		}
		for _, c := range conns {
			_ = c.write(b.buf[from:end])
		}
		d := g.clock().Sub(w0)
		g.writes.Add(1)
		if int64(d) > g.maxWrite.Load() {
			g.maxWrite.Store(int64(d))
		}
		if d > slowWrite {
			g.slowWrites.Add(1)
		}
		from = end
	}
	g.sent.Add(uint64(b.n))
	g.bytes.Add(uint64(len(b.buf)))
	for i, n := range b.labels {
		g.written[i].Add(uint64(n) * uint64(len(conns)))
	}
}

// setThreadNice gives the calling OS thread the nice value n (0: leave it).
func setThreadNice(n int) error {
	if n == 0 {
		return nil
	}
	return syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), n)
}

// channelExt returns "SIP/200" for SIP/200-0000001a.
func channelExt(ch string) (string, bool) {
	cn, ok := ami.ParseChannel(ch)
	if !ok {
		return "", false
	}
	return cn.Tech.String() + "/" + cn.Name, true
}

// regexExt reads the extension out of the guard's /^SIP\/200-[0-9a-f]{8}$/.
func regexExt(re string) (string, bool) {
	s := strings.TrimSuffix(strings.TrimPrefix(re, "/^"), "$/")
	s = strings.TrimSuffix(s, "-[0-9a-f]{8}")
	tech, name, ok := strings.Cut(s, `\/`)
	if !ok {
		return "", false
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		if name[i] == '\\' && i+1 < len(name) {
			i++
		}
		b.WriteByte(name[i])
	}
	return tech + "/" + b.String(), true
}

// actedOnExt records a Hangup action of the guard for an extension.
// Callers hold g.mu.
func (g *generator) actedOnExt(ext string, at time.Time) {
	a := g.byExt[ext]
	if a == nil {
		if _, name, ok := strings.Cut(ext, "/"); ok && isLegitExt(name) {
			g.legitHit[ext]++
		}
		return
	}
	g.actedLocked(a)
	if a.hungupAt.IsZero() {
		a.hungupAt = at
	}
}

// actedLocked marks the attack acted on, the first time. Callers hold g.mu.
func (g *generator) actedLocked(a *attack) {
	if !a.acted {
		a.acted, a.callsAtAct = true, a.callsSent
	}
}

func (g *generator) killLocked(c *call, cause int) {
	if c.dead {
		return
	}
	c.dead = true
	delete(c.att.live, c.vals[pCH])
	delete(g.byChannel, c.vals[pCH])
	c.vals[pCAUSE] = strconv.Itoa(cause)
	c.vals[pCAUSETXT] = causeText(cause)
	g.inject = append(g.inject, c)
}

func causeText(c int) string {
	switch c {
	case 16:
		return "Normal Clearing"
	case 21:
		return "Call Rejected"
	}
	return "Unknown"
}

func (g *generator) hangupMatching(raw string, re *regexp.Regexp, cause int, at time.Time) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if ext, ok := regexExt(raw); ok {
		g.actedOnExt(ext, at)
	}
	var hung []string
	for ch, c := range g.byChannel {
		if re.MatchString(ch) {
			hung = append(hung, ch)
			g.killLocked(c, cause)
		}
	}
	slices.Sort(hung)
	return hung
}

func (g *generator) hangupChannel(ch string, cause int, at time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if ext, ok := channelExt(ch); ok {
		g.actedOnExt(ext, at)
	}
	c := g.byChannel[ch]
	if c == nil {
		return false
	}
	g.killLocked(c, cause)
	return true
}

// peerAddr answers Getvar CHANNEL(recvip) / CHANNEL(pjsip,remote_addr): the
// address an attack channel's call came from.
func (g *generator) peerAddr(ch, variable string) (string, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	c := g.byChannel[ch]
	if c == nil {
		return "", false
	}
	ip := c.att.Addr.String()
	if strings.Contains(variable, "pjsip") {
		return ip + ":5073", true
	}
	return ip, true
}

// noteBan records a ban the guard applied (from its log: the address, the
// extension it was for, if any, and the log line's time).
func (g *generator) noteBan(addr netip.Addr, ext string, at time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, a := range g.attacks {
		if a.Addr == addr || (ext != "" && a.Extension == ext) {
			g.actedLocked(a)
			if a.bannedAt.IsZero() {
				a.bannedAt = at
			}
			return
		}
	}
	if addr.Is4() && addr.As4()[0] == 10 {
		g.legitHit[addr.String()]++
	}
}
