package worker

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"sync"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// ProcSampler reads host CPU and memory use from /proc. CPU percent is
// the busy share since the previous sample.
type ProcSampler struct {
	mu              sync.Mutex
	lastBusy, lastT uint64
	// RunningTasks reports the executor's running count (0 until tasks
	// exist).
	RunningTasks func() int32
}

// Sample returns current usage; fields it cannot read stay zero.
func (s *ProcSampler) Sample() *pb.WorkerStatus {
	st := &pb.WorkerStatus{}
	if busy, total, ok := readCPU(); ok {
		s.mu.Lock()
		if s.lastT != 0 && total > s.lastT {
			st.CpuPercent = 100 * float64(busy-s.lastBusy) / float64(total-s.lastT)
		}
		s.lastBusy, s.lastT = busy, total
		s.mu.Unlock()
	}
	st.MemoryUsedMib = readMemUsedMiB()
	if s.RunningTasks != nil {
		st.RunningTasks = s.RunningTasks()
	}
	return st
}

func readCPU() (busy, total uint64, ok bool) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, 0, false
	}
	fields := strings.Fields(sc.Text())
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0, 0, false
	}
	var idle uint64
	for i, f := range fields[1:] {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		total += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	return total - idle, total, true
}

func readMemUsedMiB() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	var total, avail int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "MemTotal:":
			total = v
		case "MemAvailable:":
			avail = v
		}
	}
	return (total - avail) / 1024
}
