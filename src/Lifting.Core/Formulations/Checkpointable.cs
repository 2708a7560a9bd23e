using static TorchSharp.torch;

namespace Lifting.Formulations;

/// A lifted problem whose complete state can be saved and restored in place, so that a run
/// continued from a checkpoint ends exactly where an uninterrupted run ends. `LiftedProblem`
/// implements it for every formulation derived from it (weights, their step states, the
/// per-example store, shared variables; scalars by override).
public interface ICheckpointable
{
    /// Every tensor of the state by a stable name. Restoring copies saved values into these
    /// tensors in place, so the names and shapes must not depend on anything but the run's settings.
    IReadOnlyDictionary<string, Tensor> StateTensors { get; }

    /// Scalars of the state that are not tensors (e.g. the penalty's current μ).
    IReadOnlyDictionary<string, double> StateScalars { get; }

    /// Sets the scalars `StateScalars` returned when the checkpoint was taken.
    void RestoreScalars(IReadOnlyDictionary<string, double> scalars);
}
