namespace Org.M2mpsk.Tests {
}
