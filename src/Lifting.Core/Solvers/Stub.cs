// TEMPORARY: replaced by the solvers branch.
namespace Lifting.Solvers;
public sealed record SubProblem(IReadOnlyList<string> PlayerNames, int InnerSteps);
