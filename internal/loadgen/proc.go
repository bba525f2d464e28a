package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// What the run reads about another process, from /proc, and about the
// guard, from its metrics endpoint.

// userHZ is the unit of utime and stime in /proc/<pid>/stat (USER_HZ,
// 100 on every Linux architecture Go runs on).
const userHZ = 100

// procCPU is the CPU time (user + system, every thread) the process used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

// parseStatCPU reads utime and stime (fields 14 and 15) from a
// /proc/<pid>/stat line; the command name, in parentheses, may hold spaces.
func parseStatCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("stat: no command name")
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state): utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, errors.New("stat: too few fields")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * time.Second / userHZ, nil
}

// procStatusKiB reads a "kB" line of /proc/<pid>/status (VmHWM: the peak
// resident set; VmRSS: the resident set now).
func procStatusKiB(pid int, key string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseStatusKiB(f, key)
}

func parseStatusKiB(r io.Reader, key string) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), key+":")
		if !ok {
			continue
		}
		return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("status: no %s line", key)
}

// cpuPressure is /proc/pressure/cpu's "some" total: µs during which some
// runnable task of the machine waited for a CPU (-1: not available).
func cpuPressure() int64 {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return -1
	}
	line, _, _ := strings.Cut(string(b), "\n")
	_, tot, ok := strings.Cut(line, "total=")
	if !ok {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimSpace(tot), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// scrape is one reading of the guard's /metrics: every sample by its
// series as the text format writes it (name, or name{labels}).
type scrape map[string]float64

// parseScrape reads the Prometheus text format (comments skipped).
func parseScrape(r io.Reader) (scrape, error) {
	out := scrape{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("metrics: no value in %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics: %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// get returns the sample of name with one label (none when label is "").
func (s scrape) get(name, label, value string) float64 {
	if label == "" {
		return s[name]
	}
	return s[name+"{"+label+"=\""+value+"\"}"]
}

// scraper reads the guard's metrics endpoint.
type scraper struct {
	url    string
	client *http.Client
}

func newScraper(addr string) *scraper {
	return &scraper{url: "http://" + addr + "/metrics", client: &http.Client{Timeout: 5 * time.Second}}
}

func (s *scraper) scrape(ctx context.Context) (scrape, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	return parseScrape(resp.Body)
}
