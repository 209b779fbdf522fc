// Communicator interface implementations: SoloCommunicator is header-only.
#include "parallel/communicator.h"
