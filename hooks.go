package microlock

import "sync"

// hookRunners counts a Mutex's goroutines that deliver events to its hook
// (see hold.emitAsync), so that Close can wait for them. Once closed it
// starts no more: an event raised after Close is dropped, since the Mutex's
// holds have all ended by then.
type hookRunners struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// add counts a new runner, unless closed.
func (r *hookRunners) add() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.wg.Add(1)
	return true
}

func (r *hookRunners) done() { r.wg.Done() }

// close starts no more runners and waits for those running. Setting closed
// under mu orders it against add, so Wait never races an Add.
func (r *hookRunners) close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.wg.Wait()
}
