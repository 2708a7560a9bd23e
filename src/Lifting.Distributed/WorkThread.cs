using System.Collections.Concurrent;

namespace Lifting.Distributed;

/// A thread of its own that runs the work it is handed, in order: LibTorch's dispose scopes are
/// per thread, so a replica's or a segment's computations nest as in the trainer whichever
/// thread of the silo or the coordinator asks for them.
internal sealed class WorkThread
{
    private readonly BlockingCollection<Action> work = new();

    public WorkThread(string name)
    {
        new Thread(() =>
        {
            foreach (var action in work.GetConsumingEnumerable()) action();
        }) { IsBackground = true, Name = name }.Start();
    }

    public bool Stopped => work.IsAddingCompleted;

    public Task<T> Run<T>(Func<T> f)
    {
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        try
        {
            work.Add(() =>
            {
                try { done.SetResult(f()); }
                catch (Exception e) { done.SetException(e); }
            });
        }
        catch (InvalidOperationException) { done.SetException(new ObjectDisposedException("the work thread has stopped")); }
        return done.Task;
    }

    public Task Run(Action f) => Run(() => { f(); return 0; });

    /// Runs `last` after the work already handed over, then ends the thread.
    public void Stop(Action last)
    {
        if (Stopped) return;
        var done = Run(last);
        work.CompleteAdding();
        done.Wait();
    }
}
