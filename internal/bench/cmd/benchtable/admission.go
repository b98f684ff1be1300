package main

import "fmt"

// The admission benchmarks (issue 12): a semaphore of limit 4 with 16
// contenders against 4 Mutexes tried in turn and 4 independent keys, and a
// read-heavy shared lock against etcd's recipes.RWMutex.
const (
	semLimit     = 4
	semaphore    = "BenchmarkSemaphore/semaphore"
	semInTurn    = "BenchmarkSemaphore/in-turn"
	semIndep     = "BenchmarkSemaphore/independent"
	readMicro    = "BenchmarkReadHeavy/microlock"
	readRWMutex  = "BenchmarkReadHeavy/etcd-rwmutex"
	holdsPerSec  = "holds/s"
	p99Wait      = "p99-wait-ms"
	fairnessUnit = "max/min"
)

func (t *table) buildAdmission() {
	sem, turn, indep := t.est(semaphore, holdsPerSec), t.est(semInTurn, holdsPerSec), t.est(semIndep, holdsPerSec)
	g := atLeast(1.0, " in turn")
	t.add(row{fmt.Sprintf("Semaphore limit %d, 16 contenders: holds/s; floor: 4 Mutexes tried in turn", semLimit),
		num(sem.v), "", num(turn.v), t.ratio(sem.div(turn)), g.text, g.judge(sem.div(turn).v)})
	g = atLeast(0.8, " independent")
	t.add(row{"… ÷ 4 independent keys, 4 contenders each (floor column)", num(sem.v), "", num(indep.v),
		t.ratio(sem.div(indep)), g.text, g.judge(sem.div(indep).v)})
	t.add(row{measure: "… p99 wait (ms): semaphore; floor: in turn / independent keys",
		microlock: num(t.val(semaphore, p99Wait)),
		floor:     num(t.val(semInTurn, p99Wait)) + " / " + num(t.val(semIndep, p99Wait))})
	fs := t.est(semaphore, fairnessUnit)
	g = atMost(1.1, "")
	t.add(row{"… fairness: most ÷ fewest acquisitions", t.ratio(fs), "", "", t.ratio(fs), g.text, g.judge(fs.v)})
	w := t.est(semaphore, "wakeups/release")
	wg := target{atMost: true, bound: semLimit + 1, text: fmt.Sprintf("≤ n+1 = %d", semLimit+1)}
	t.add(row{"… wake-ups per release: watch events delivered", num(w.v), "", "", "", wg.text, wg.judge(w.v)})

	rm, re := t.est(readMicro, holdsPerSec), t.est(readRWMutex, holdsPerSec)
	g = atLeast(2, " etcd")
	t.add(row{"Read-heavy, 90% shared, 8 contenders: holds/s; etcd: recipes.RWMutex", num(rm.v), num(re.v), "",
		t.ratio(rm.div(re)), g.text, g.judge(rm.div(re).v)})
	t.add(row{measure: "… p99 wait (ms)", microlock: num(t.val(readMicro, p99Wait)), etcd: num(t.val(readRWMutex, p99Wait))})
	fr := t.est(readMicro, fairnessUnit)
	g = atMost(1.1, "")
	t.add(row{"… fairness: most ÷ fewest holds", t.ratio(fr), t.ratio(t.est(readRWMutex, fairnessUnit)), "", t.ratio(fr), g.text, g.judge(fr.v)})
}
