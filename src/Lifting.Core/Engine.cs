namespace Lifting;
